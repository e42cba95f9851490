"""The DVC stages of dvc.yaml, one module each: its main reads its params, calls peftqa and writes its outputs."""
