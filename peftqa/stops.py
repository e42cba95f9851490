"""Stopping cleanly: the command-line wrapper every stage's and subcommand's main goes through (run_cli), which turns
a PeftqaError into one paragraph and SIGTERM/SIGINT into Interrupted, and shielded() blocks that a stop waits for."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

from peftqa.errors import PeftqaError, complaint, disk_full


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler's, `kill`'s) or SIGINT (Ctrl-C), raised where the process is (outside shielded() blocks),
    as Python raises KeyboardInterrupt: `except Exception` does not catch it, so the code that ends an MLflow run
    sees it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_shield = {"depth": 0, "pending": None}  # how many shielded() blocks the main thread is in; a stop they hold back


@contextmanager
def shielded() -> Iterator[None]:
    """Within it (also as a decorator), SIGTERM and SIGINT wait until it ends: a write to the MLflow store is never cut
    inside its sqlite transaction, which would leave this process's own lock on the store, so that the run could not
    be ended. A second stop signal while one waits ends the process at once."""
    _shield["depth"] += 1
    try:
        yield
    finally:
        _shield["depth"] -= 1
        if _shield["depth"] == 0 and _shield["pending"] is not None:
            signum, _shield["pending"] = _shield["pending"], None
            raise Interrupted(signum)


def _raise_interrupted(signum: int, frame: object) -> None:
    if _shield["pending"] is not None:  # a second stop: the process may be stuck
        _die_by(signum)
    if _shield["depth"]:
        _shield["pending"] = signum
        return
    signal.signal(signum, signal.SIG_DFL)  # once: a second signal ends the process (one stuck in native code too)
    raise Interrupted(signum)


def handle_stops() -> dict[int, object]:
    """Raise Interrupted on SIGTERM and SIGINT (outside shielded() blocks), except for a signal the process was started
    ignoring, and only in the main thread (which alone may set handlers); the handlers replaced, for run_cli to put
    back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _raise_interrupted) for signum in STOP_SIGNALS
            if signal.getsignal(signum) != signal.SIG_IGN}


def _die_by(signum: int) -> None:
    """End the process by `signum`'s default action, as if it had not been caught: a shell then sees a death by the
    signal (exit status 128 + signum) and stops a loop of stages on Ctrl-C, as it would not for a plain exit."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def run_cli(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Run `main(args)` with argv (default: sys.argv[1:]) less --debug; a PeftqaError becomes one paragraph on stderr
    and exit 1 (traceback with --debug). SIGTERM and SIGINT (Ctrl-C) stop it as cleanly: one paragraph, and the
    shell's exit code for the signal (143, 130)."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args or os.environ.get("PEFTQA_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # peft 0.21 reads a property transformers 5 deprecated: one warning per model load, nothing the user can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    previous_handlers = handle_stops()
    try:
        main(args)
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        if debug:
            raise
        print(f"error: stopped by {signal.Signals(signum).name}. Every output is whole: each is written under a "
              "temporary name and renamed into place, so a file is the new one or the previous one. A training in a "
              "workspace resumes from its last checkpoint on the next `dvc repro`; a queued experiment is queued "
              "again (docs/experiments.md).", file=sys.stderr)
        sys.stderr.flush()
        _die_by(signum)
    except PeftqaError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # a full disk outside peftqa's own writes (MLflow's copy of the artifacts, its sqlite)
        if debug or not disk_full(err):
            raise
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"error: {where}the disk is full ({complaint(err)}). Free space on that disk, then run the command "
              "again", file=sys.stderr)
        sys.exit(1)
    finally:
        for signum, handler in previous_handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
