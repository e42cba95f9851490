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
from pathlib import Path

from peftqa.catalog import GROUND_TRUTH_JSON, RAW_JSON
from peftqa.data.download import HINT, copy_verified, resolve_source
from peftqa.files import replace_dir_atomic
from peftqa.params import load_params

log = logging.getLogger("peftqa.fetch")

TRUTH_HINT = (f"prepare.protocol: official needs PubMedQA's {GROUND_TRUTH_JSON.file}: put it beside PUBMEDQA_JSON or "
              "point PUBMEDQA_GROUND_TRUTH_JSON at it (the random protocol does not need it).")


def main(args: list[str]) -> None:
    all_params = load_params()
    params = all_params.fetch
    sources = {RAW_JSON: (resolve_source("PUBMEDQA_JSON", params.url), params.sha256, HINT)}
    if all_params.prepare.protocol == "official":  # the only reader of the ground truth (stages/prepare.py)
        sources[GROUND_TRUTH_JSON] = (
            resolve_source("PUBMEDQA_GROUND_TRUTH_JSON", params.ground_truth_url, sibling_of="PUBMEDQA_JSON"),
            params.ground_truth_sha256, TRUTH_HINT)

    def copy_all(folder: Path) -> None:
        for output, (source, sha256, hint) in sources.items():
            copy_verified(source, output.path(into=folder), sha256, params.timeout_s, hint)

    # every file is copied and verified in a temporary folder first, which then replaces data/raw whole: a failure
    # leaves data/raw as it was, and a ground truth from an earlier official run does not linger under random
    replace_dir_atomic(copy_all, RAW_JSON.folder_path())
    log.info("data/raw holds %s (prepare.protocol: %s)", ", ".join(output.file for output in sources),
             all_params.prepare.protocol)


if __name__ == "__main__":
    from peftqa.stops import run_cli

    run_cli(main)
