"""The first SmolLM2 study (reports/smollm2/): one whole pipeline run at full scale on the default split, its
demo-scale slice that README's quickstart offers, and the reference study's published table beside it. Its tables
are peftqa.studies.run_copy's blocks of a whole run, and `commands` and `beside-reference` here.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

from peftqa.catalog import REFERENCE_CHOICES
from peftqa.errors import PeftqaError
from peftqa.files import read_json
from peftqa.params import BASE_CALIBRATED
from peftqa.report.tables import markdown_table
from peftqa.studies.run_copy import (
    RUN_BLOCKS,
    RunCopy,
    duration,
    provenance,
    read_file,
    read_run_copy,
    shell_lines,
)
from peftqa.studies.shape import Study, copy_whole_run

SMOLLM2_DIR = Path("reports/smollm2")
# The reference study's table as it publishes it (test split of 89 items): accuracy, macro-F1, trainable params.
# Not a peftqa output: shown beside ours, never compared with a test.
REFERENCE_STUDY = {"model": "FLAN-T5-XL (2.78B parameters, seq2seq)",
                   "rows": {"base": (0.449, 0.389, 0), "prompt_tuning": (0.719, 0.648, 204_800),
                            "prefix_tuning": (0.742, 0.703, 4_915_200)},
                   # what differs, the reference's side: what our sources say of it, and where they are silent, what
                   # peftqa's flan-t5-xl profile (docs/gpu.md) runs
                   "setup": {"weights": "the released checkpoint", "hardware": "not stated in our sources (a GPU "
                             "for 2.78B parameters)", "epochs": "not stated in our sources; peftqa's flan-t5-xl "
                             "profile runs 5", "max_length": "not stated; the profile uses 512",
                             "virtual tokens": "50 (what gives its 204,800 and 4,915,200 parameters)"}}


def require_full_scale(study: RunCopy, names: Sequence[str] = ("train.limit_train", "evaluate.limit_items")) -> None:
    """A study rendered as a result must be full scale: a shortened run has no place in these blocks' titles."""
    limits = {"train.limit_train": study.params.train.limit_train,
              "evaluate.limit_items": study.params.evaluate.limit_items}
    short = [f"{name} {limits[name]}" for name in names if limits[name]]
    if short:
        raise PeftqaError(f"study {study.root}: params.yaml has {', '.join(short)}: a shortened run, not a result; "
                          "label it demo scale instead of rendering it as the study")
    if BASE_CALIBRATED not in study.references:
        raise PeftqaError(f"study {study.root}: no {BASE_CALIBRATED} row ({REFERENCE_CHOICES.path()}): the "
                          "verdict needs the calibrated zero-shot")


def read_result(folder: Path) -> RunCopy:
    """A whole run rendered as a result: full scale, with the calibrated zero-shot."""
    study = read_run_copy(folder)
    require_full_scale(study)
    return study


def beside_reference(study: RunCopy) -> str:
    """The reference study's published rows beside this study's, method by method (no test between them), then
    what differs between the two setups."""
    rows = []
    for method in study.methods:
        published = REFERENCE_STUDY["rows"].get(method)
        ours = study.metrics["test"][method]
        rows.append([method, f"{published[0]:.3f} / {published[1]:.3f}" if published else "—",
                     f"{published[2]:,}" if published else "—", f"{ours['accuracy']:.3f} / {ours['macro_f1']:.3f}",
                     f"{study.summary[method]['trainable_params']:,}"])
    params, setup = study.params, REFERENCE_STUDY["setup"]
    tokens = sorted({params.peft[m].num_virtual_tokens for m in study.tuned if hasattr(params.peft[m],
                                                                                        "num_virtual_tokens")})
    total = study.summary[study.baseline]["total_params"]
    differs = [["model", REFERENCE_STUDY["model"], f"{params.model.name_or_path} ({total / 1e6:.1f}M parameters, "
                f"{study.summary[study.baseline]['family']})"],
               ["weights", setup["weights"], study.run["weights"]],
               ["hardware", setup["hardware"], study.run["machine"]],
               ["epochs", setup["epochs"], str(params.train.epochs)],
               ["max_length", setup["max_length"], str(params.model.max_length)],
               ["virtual tokens", setup["virtual tokens"], ", ".join(map(str, tokens))]]
    return "\n\n".join([
        markdown_table(["method", f"reference: {REFERENCE_STUDY['model']}, accuracy / macro-F1",
                        "its trainable params", f"here: {params.model.name_or_path}, accuracy / macro-F1",
                        "trainable params here"], rows),
        markdown_table(["", "the reference", "here"], differs)])


# The study's command cut to a demo, for a first look at SmolLM2 here: renamed, so that its name says it is not the
# study, and sliced (train items; val and test items) to a fraction of the study's hour on 2 cores;
# reports/smollm2/demo.json records a run of it, with its time
DEMO_NAME = "smollm2-demo"
DEMO_SETTINGS = ("train.limit_train=64", "evaluate.limit_items=32")
DEMO_JSON = "demo.json"


def demo_command(command: str) -> str:
    """The study's `dvc exp run -n <name> -S ...` command as the demo: named DEMO_NAME, with DEMO_SETTINGS added."""
    words = shlex.split(command)
    words[words.index("-n") + 1] = DEMO_NAME
    return shlex.join([*words, *(word for setting in DEMO_SETTINGS for word in ("-S", setting))])


def commands(study: RunCopy) -> str:
    """How to run SmolLM2 here: the demo (its recorded run and time), then the study's own command (its time)."""
    run, demo = study.run, read_file(study.root, DEMO_JSON, read_json)
    expected = demo_command(run["command"])
    if demo["command"] != expected:
        raise PeftqaError(f"{study.root / DEMO_JSON} records `{demo['command']}`, not the demo of the study's "
                          f"command (`{expected}`): run the demo again and record it there")
    return (f"A demo-scale slice, `{DEMO_NAME}` ({', '.join(DEMO_SETTINGS)}), a first look and not a result: "
            f"{duration(demo['wall_s'])} on {demo['finished'][:10]}, from commit `{demo['commit'][:7]}`, on "
            f"{demo['machine']}.\n\n{shell_lines(expected)}\n\nThe whole study, as it made `{SMOLLM2_DIR}/`: "
            f"{duration(run['wall_s'])} on {run['machine']}.\n\n{shell_lines(run['command'])}")


SMOLLM2 = Study(name="smollm2", folder=SMOLLM2_DIR, read=read_result, provenance=provenance,
                blocks={**RUN_BLOCKS, "commands": commands, "beside-reference": beside_reference},
                copy_in=copy_whole_run)
