"""Data in: PubMedQA's raw files fetched and verified (download), parsed into items, cleaned and split (dataset), and
the frozen encoder's features of every split (features)."""
