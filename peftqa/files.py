"""Files: every output written atomically (a temporary name in the same folder, fsync, then a rename), a folder
swapped into place whole, a JSON file read, hashes and sizes, and the project root."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from peftqa.errors import naming_a_full_disk

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (os.umask can only be read by setting it)


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


def read_json(path: str | Path) -> object:
    """A JSON file that no pipeline stage writes (a study's run.json, a bench record); outputs: peftqa.catalog."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


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
