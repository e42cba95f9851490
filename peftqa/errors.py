"""The errors a user can fix, and the checks that raise them: PeftqaError (one paragraph, no traceback), a bad
param (ParamsError, InvalidValue, require), a truncated or corrupted file (reading, corrupted), a full disk (DiskFull,
naming_a_full_disk); and the package's logger."""
from __future__ import annotations

import errno
import logging
import pickle
import shutil
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("peftqa")


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
