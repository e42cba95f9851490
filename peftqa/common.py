"""Shared plumbing for every stage: the error type, atomic writes, hashing, the repo root and the CLI wrapper."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

log = logging.getLogger("peftqa")
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (os.umask can only be read by setting it)


class PeftqaError(Exception):
    """A problem the user can fix. Printed as one paragraph, without a traceback unless --debug is given."""


class ParamsError(PeftqaError):
    """A bad params.yaml key or value; the message names the key."""


class InvalidValue(ParamsError):
    """`key` = `value` breaks a rule. A method's knobs name their keys within their section ("lr"); `within` puts
    the section in front ("peft.lora.lr") once the section is known."""

    def __init__(self, key: str, value: object, why: str):
        self.key, self.value, self.why = key, value, why
        super().__init__(f"params: '{key}' = {value!r} is invalid: {why}")

    def within(self, section: str) -> InvalidValue:
        return InvalidValue(f"{section}.{self.key}", self.value, self.why)


TEXT_FIELDS = ("question", "context")  # what a model reads of an item: `peftqa predict`'s fields, the pyfunc's columns


def text_field_problem(field: str, value: object) -> str | None:
    """Why `value` cannot be an item's question or context, or None: each must be a non-empty string."""
    if isinstance(value, str) and value.strip():
        return None
    return f"field '{field}' must be a non-empty string, got {value!r:.60}"


def unreadable(err: BaseException) -> bool:
    """Whether `err` is how a truncated or corrupted file fails to load: safetensors' header errors, a zip's (an .npz,
    torch's checkpoint format) missing directory or bad CRC, a pickle cut short, or the OS refusing the short read."""
    return (isinstance(err, (EOFError, zipfile.BadZipFile, pickle.UnpicklingError, zlib.error))
            or isinstance(err, OSError) and err.errno == errno.EINVAL  # torch.load of a cut zip
            or type(err).__name__ == "SafetensorError"
            or isinstance(err, RuntimeError) and "PytorchStreamReader" in str(err))


@contextmanager
def reading(path: str | Path, fix: str) -> Iterator[None]:
    """Within it, a load of `path` that fails as a truncated or corrupted file does becomes one PeftqaError that names
    the file, the library's complaint and `fix` (how to get the file back), instead of the library's traceback."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a corrupt file's
        if not unreadable(err):
            raise
        raise corrupted(path, complaint(err), fix) from None


def corrupted(path: str | Path, why: str, fix: str) -> PeftqaError:
    """The one paragraph for a file that is truncated or corrupted: its path, why that shows, and how to get it back."""
    return PeftqaError(f"{path}: cannot be read, it is truncated or corrupted ({why}); {fix}")


def complaint(err: BaseException) -> str:
    """A library's error in one short line: its type and the first line of its message."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}"


class DiskFull(PeftqaError):
    """`path` could not be written because its disk (or the user's quota) is full; what was there is unchanged.
    `cause` is the library's error, kept so that a folder's DiskFull names the folder, not its temporary file."""

    def __init__(self, path: Path, err: BaseException, what: str = "file"):
        self.path, self.cause = path, err.cause if isinstance(err, DiskFull) else err
        free = shutil.disk_usage(_existing(path.parent)).free
        full = "your disk quota is used up" if "quota" in str(self.cause).lower() else "the disk is full"
        super().__init__(f"{path}: {full}, so it could not be written ({complaint(self.cause)}; {free} bytes free "
                         f"there); any previous {what} there is unchanged, and no temporary file is left. Free "
                         "space on that disk (or move the repository to a larger one), then run the command again")


DISK_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "database or disk is full")


def disk_full(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised while handling, is a write refused for want of space: the OS's ENOSPC
    or EDQUOT, as Python raises it or as safetensors (Rust), torch (C++) and sqlite put it into their messages."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) or any(
                text in str(err) for text in DISK_FULL_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def naming_a_full_disk(path: Path, what: str = "file") -> Iterator[None]:
    """Within it, a write refused for want of space becomes DiskFull naming `path` (one raised for a file inside a
    folder being built is named again, for the folder); other errors pass as they are."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised as it is unless the disk is full
        if not disk_full(err):
            raise
        raise DiskFull(path, err, what) from None


def _existing(folder: Path) -> Path:
    """The nearest folder that exists: disk_usage needs one."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def require(ok: bool, key: str, value: object, why: str) -> None:
    """Raise InvalidValue(key, value, why) unless `ok`: the one-line form of a params check."""
    if not ok:
        raise InvalidValue(key, value, why)


# -----------------------------------------------------------------------------
# atomic writes: write to a temporary name in the same folder, fsync, then rename into place


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed. A full disk
    becomes DiskFull, which names `path`."""
    path = Path(path)
    with naming_a_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with naming_a_full_disk(path):
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give it the usual mode
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv_atomic(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj: object) -> object:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# -----------------------------------------------------------------------------
# files and paths


def read_split(path: str | Path, limit: int = 0) -> pd.DataFrame:
    """A prepared split (pmid, question, context, label; pmids and labels stay strings), its first `limit` rows
    when limit > 0 (train.limit_train, evaluate.limit_items: demo slices that never change the split itself)."""
    try:
        frame = pd.read_csv(path, dtype={"pmid": str, "label": str})
    except FileNotFoundError:
        raise PeftqaError(f"{path} not found; run `dvc repro prepare` first") from None
    except pd.errors.EmptyDataError:
        raise PeftqaError(f"{path}: empty file; run `dvc repro prepare`") from None
    return frame.iloc[:limit] if limit else frame


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def project_root() -> Path:
    """The repository root, absolute. DVC sets DVC_ROOT for stage commands; `dvc exp run --temp/--queue`
    runs them in copies under <root>/.dvc (its temp folder), and shared state (mlflow.db) belongs to <root>,
    not the copy."""
    root = Path(os.environ.get("DVC_ROOT") or _find_up(Path.cwd(), "dvc.yaml") or Path.cwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i + 1 : i + 4] == (".dvc", "tmp", "exps"):
            return Path(*parts[: i + 1])
    return root


def _find_up(start: Path, name: str) -> Path | None:
    for folder in [start, *start.parents]:
        if (folder / name).exists():
            return folder
    return None


# -----------------------------------------------------------------------------
# the command-line wrapper every stage's __main__ goes through


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


def _handle_stops() -> dict[int, object]:
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
    previous_handlers = _handle_stops()
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


def replace_dir_atomic(build: Callable[[Path], None], dest: str | Path) -> None:
    """Call build(tmp_dir) to fill a temporary folder beside `dest`, then swap it into place.
    A crash mid-build leaves the previous `dest` as it was; a full disk becomes DiskFull, which names `dest`."""
    dest = Path(dest)
    with naming_a_full_disk(dest, "folder"):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    old = dest.with_name(f".{dest.name}.old")
    try:
        with naming_a_full_disk(dest, "folder"):
            build(tmp)
            if dest.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old)
            os.replace(tmp, dest)
    finally:
        if old.exists() and not dest.exists():  # stopped (SIGTERM, Ctrl-C) between the two renames: put it back
            os.replace(old, dest)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def folder_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
