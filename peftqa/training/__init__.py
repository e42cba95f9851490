"""The training of one method: the loop (loop), what survives a kill (checkpoint), several processes
(distributed), and one whole training with its outputs and MLflow run (run)."""
