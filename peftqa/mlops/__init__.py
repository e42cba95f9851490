"""MLflow and what it records: the tracked runs (tracking), the served model (serving), the locked environment a run
was made with (environment) and the OS's process checks behind orphaned runs (processes).
"""
