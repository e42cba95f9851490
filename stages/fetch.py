"""Stage fetch: the raw PubMedQA PQA-L files that params `prepare.protocol` needs, verified by sha256.

Inputs:  a local file named by $PUBMEDQA_JSON (offline use), else params fetch.url; and, only under
         prepare.protocol: official, $PUBMEDQA_GROUND_TRUTH_JSON, else test_ground_truth.json beside $PUBMEDQA_JSON,
         else fetch.ground_truth_url.
Outputs: the folder data/raw (one DVC out), holding exactly ori_pqal.json, plus test_ground_truth.json under the
         official protocol (byte-identical to the sources). The random protocol never reads the ground truth, so it
         is neither needed nor written.
Every file is copied and verified into a temporary folder beside data/raw, which then replaces data/raw whole: on any
failure data/raw is left as it was (absent under `dvc repro`, which removes a stage's outs before running it).
"""
from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from stages.common import PeftqaError, replace_dir_atomic, sha256_file
from stages.params import load_params

log = logging.getLogger("peftqa.fetch")

RAW_DIR = Path("data/raw")
HINT = ("To run offline, point PUBMEDQA_JSON at a local copy of ori_pqal.json, e.g. "
        "`PUBMEDQA_JSON=../shared/data/pubmedqa/ori_pqal.json make run` (under prepare.protocol: official, "
        "test_ground_truth.json is then read from the same folder, or from PUBMEDQA_GROUND_TRUTH_JSON).")
TRUTH_HINT = ("prepare.protocol: official needs PubMedQA's test_ground_truth.json: put it beside PUBMEDQA_JSON or "
              "point PUBMEDQA_GROUND_TRUTH_JSON at it (the random protocol does not need it).")


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
                          f"The file is not the pinned PubMedQA release; nothing was written to {RAW_DIR}. {hint}")
    log.info("fetched %s (sha256 ok)", source)


def main(args: list[str]) -> None:
    all_params = load_params()
    params = all_params.fetch
    sources = {"ori_pqal.json": (resolve_source("PUBMEDQA_JSON", params.url), params.sha256, HINT)}
    if all_params.prepare.protocol == "official":  # the only reader of the ground truth (stages/prepare.py)
        sources["test_ground_truth.json"] = (
            resolve_source("PUBMEDQA_GROUND_TRUTH_JSON", params.ground_truth_url, sibling_of="PUBMEDQA_JSON"),
            params.ground_truth_sha256, TRUTH_HINT)

    def copy_all(folder: Path) -> None:
        for name, (source, sha256, hint) in sources.items():
            copy_verified(source, folder / name, sha256, params.timeout_s, hint)

    # every file is copied and verified in a temporary folder first, which then replaces data/raw whole: a failure
    # leaves data/raw as it was, and a ground truth from an earlier official run does not linger under random
    replace_dir_atomic(copy_all, RAW_DIR)
    log.info("data/raw holds %s (prepare.protocol: %s)", ", ".join(sources), all_params.prepare.protocol)


if __name__ == "__main__":
    from stages.common import run_cli

    run_cli(main)
