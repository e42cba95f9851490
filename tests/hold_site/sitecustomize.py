"""Run by Python at the start of every process whose PYTHONPATH begins with this folder, which only hold.Listener.env
puts there (a test's child processes, and what they start: a `dvc queue` worker's stages). With the hold's variable set,
a training in the process holds after its Nth checkpoint write (tests/hold.py); without it, nothing happens."""
import os
import sys

if os.environ.get("PEFTQA_TESTS_HOLD_AFTER_CHECKPOINTS"):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, last: it shadows nothing
    import hold

    hold.install()
