"""Stage fetch: the raw PubMedQA PQA-L files, verified by sha256.

Inputs:  a local file named by $PUBMEDQA_JSON (offline use), else params fetch.url;
         $PUBMEDQA_GROUND_TRUTH_JSON, else test_ground_truth.json beside $PUBMEDQA_JSON, else fetch.ground_truth_url.
Outputs: data/raw/ori_pqal.json, data/raw/test_ground_truth.json (byte-identical to the sources).
On any failure nothing is left at the output paths.
"""
from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from stages.common import PeftqaError, atomic_path, sha256_file
from stages.params import load_params

log = logging.getLogger("peftqa.fetch")

RAW_DIR = Path("data/raw")
HINT = ("To run offline, point PUBMEDQA_JSON at a local copy of ori_pqal.json, e.g. "
        "`PUBMEDQA_JSON=../shared/data/pubmedqa/ori_pqal.json make run` (test_ground_truth.json is then read from "
        "the same folder, or from PUBMEDQA_GROUND_TRUTH_JSON).")


def resolve_source(env_var: str, url: str, sibling_of: str | None = None) -> str:
    """Where to read from: the env var's path, else a same-named file beside `sibling_of`, else the URL."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    if sibling_of and os.environ.get(sibling_of):
        candidate = Path(os.environ[sibling_of]).parent / Path(url).name
        if candidate.exists():
            return str(candidate)
    return url


def copy_verified(source: str, tmp: Path, sha256: str, timeout_s: float) -> None:
    """Copy a local path or URL to the temporary file `tmp`, raising unless its sha256 matches."""
    is_url = source.startswith(("http://", "https://"))
    try:
        if is_url:
            with urllib.request.urlopen(source, timeout=timeout_s) as response, open(tmp, "wb") as f:
                while block := response.read(1 << 20):
                    f.write(block)
        else:
            tmp.write_bytes(Path(source).read_bytes())
    except FileNotFoundError:
        raise PeftqaError(f"fetch: the local file {source} does not exist. {HINT}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        what = f"downloading {source} failed ({err}); this machine may have no internet access" if is_url \
            else f"reading {source} failed ({err})"
        raise PeftqaError(f"fetch: {what}. {HINT}") from None
    actual = sha256_file(tmp)
    if actual != sha256:
        raise PeftqaError(f"fetch: sha256 mismatch for {source}: expected {sha256} (params.yaml fetch), got {actual}. "
                          f"The file is not the pinned PubMedQA release; nothing was written to {RAW_DIR}. {HINT}")
    log.info("fetched %s (sha256 ok)", source)


def main(args: list[str]) -> None:
    params = load_params().fetch
    raw_source = resolve_source("PUBMEDQA_JSON", params.url)
    truth_source = resolve_source("PUBMEDQA_GROUND_TRUTH_JSON", params.ground_truth_url, sibling_of="PUBMEDQA_JSON")
    # both are verified before either is renamed into place: a failure leaves nothing at the output paths
    with atomic_path(RAW_DIR / "ori_pqal.json") as raw_tmp, atomic_path(RAW_DIR / "test_ground_truth.json") as truth_tmp:
        copy_verified(raw_source, raw_tmp, params.sha256, params.timeout_s)
        copy_verified(truth_source, truth_tmp, params.ground_truth_sha256, params.timeout_s)


if __name__ == "__main__":
    from stages.common import run_cli

    run_cli(main)
