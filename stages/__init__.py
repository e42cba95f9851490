"""The peftqa stages: one module per stage of dvc.yaml; each main reads its params, calls peftqa and writes its outputs."""
