"""Stage report's parts: its inputs and their freshness checks (inputs), tables, findings, sections, the
abstention analysis, figures, and report.md assembled from them (build)."""
