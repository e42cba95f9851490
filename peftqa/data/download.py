"""Getting PubMedQA's raw files: a local copy (PUBMEDQA_JSON) or a URL, always checked against its sha256 before it
is kept.
"""
from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from peftqa.catalog import GROUND_TRUTH_JSON, RAW_JSON
from peftqa.errors import PeftqaError
from peftqa.files import sha256_file

log = logging.getLogger(__name__)

HINT = (f"To run offline, point PUBMEDQA_JSON at a local copy of {RAW_JSON.file}, e.g. "
        f"`PUBMEDQA_JSON=../shared/data/pubmedqa/{RAW_JSON.file} make run` (under prepare.protocol: official, "
        f"{GROUND_TRUTH_JSON.file} is then read from the same folder, or from PUBMEDQA_GROUND_TRUTH_JSON).")


def resolve_source(env_var: str, url: str, sibling_of: str | None = None) -> str:
    """Where to read from: the env var's path, else a same-named file beside `sibling_of`, else the URL."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    if sibling_of and os.environ.get(sibling_of):
        candidate = Path(os.environ[sibling_of]).parent / Path(url).name
        if candidate.exists():
            return str(candidate)
    return url


def copy_verified(source: str, tmp: Path, sha256: str, timeout_s: float, hint: str = HINT) -> None:
    """Copy a local path or URL to `tmp` (a file in the staging folder), raising unless its sha256 matches; an error
    ends with `hint`, how to fix it."""
    is_url = source.startswith(("http://", "https://"))
    try:
        if is_url:
            with urllib.request.urlopen(source, timeout=timeout_s) as response, open(tmp, "wb") as f:
                while block := response.read(1 << 20):
                    f.write(block)
        else:
            tmp.write_bytes(Path(source).read_bytes())
    except FileNotFoundError:
        raise PeftqaError(f"fetch: the local file {source} does not exist. {hint}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        what = f"downloading {source} failed ({err}); this machine may have no internet access" if is_url \
            else f"reading {source} failed ({err})"
        raise PeftqaError(f"fetch: {what}. {hint}") from None
    actual = sha256_file(tmp)
    if actual != sha256:
        raise PeftqaError(f"fetch: sha256 mismatch for {source}: expected {sha256} (params.yaml fetch), got {actual}. "
                          f"The file is not the pinned PubMedQA release; nothing was written to "
                          f"{RAW_JSON.folder_path()}. {hint}")
    log.info("fetched %s (sha256 ok)", source)
