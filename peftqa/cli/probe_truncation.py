"""Compare truncations: val macro-F1 of the linear probe per model.truncation and max_length.

For every mode (start, end, both) and max_length, embeds train and val with params.yaml's base model, solves the
linear probe as train@base does (peftqa.training.probe.solve_probe, C chosen on val) and prints one row per setting;
test is not read. Not a dvc.yaml stage: in the pipeline, train@base fits the probe for params.yaml's one setting.

Inputs:  data/processed/{train,val}.csv; params: model, prepare.labels, train.seed, train.device,
         train.class_weighting, peft.base.c_grid.
Outputs: a markdown table on stdout: truncation, max_length, c, val_macro_f1, val_loss; with --json PATH also the
         rows, the command and when and where it ran (reports/probe/truncation.json is the committed one, which
         docs/models.md renders).
Usage:   peftqa probe --compare-truncation [--modes start end both] [--max-lengths 128 256] [--json PATH]
"""
from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

from peftqa.training.probe import solve_probe

log = logging.getLogger(__name__)


def compare_truncation(modes: tuple[str, ...] = ("start", "end", "both"),
                       max_lengths: tuple[int, ...] = ()) -> list[dict[str, object]]:
    """Embed train and val under each model.truncation (and max_length; default: params') and solve the probe:
    val macro-F1 per setting. Test is not read."""
    import dataclasses

    from peftqa.catalog import read_split
    from peftqa.data.features import BATCH_SIZE, embed_frame
    from peftqa.methods.attach import load_backbone
    from peftqa.params import PeftParams, load_params

    params = load_params()
    labels = params.prepare.labels
    frames = {split: read_split(split) for split in ("train", "val")}
    class_weight = "balanced" if params.train.class_weighting == "balanced" else None
    rows = []
    for mode, max_length in itertools.product(modes, max_lengths or (params.model.max_length,)):
        model_params = dataclasses.replace(params.model, truncation=mode, max_length=max_length)
        backbone = load_backbone(model_params, "base", PeftParams(), labels, seed=params.train.seed,
                                 device=params.train.device)
        x = {split: embed_frame(backbone, frame, BATCH_SIZE, desc=f"{mode} {max_length} {split}")
             for split, frame in frames.items()}
        probe = solve_probe(x["train"], frames["train"]["label"].to_numpy(),
                            x["val"], frames["val"]["label"].to_numpy(),
                            labels, params.peft.base.c_grid, class_weight)
        best = max(probe.grid, key=lambda row: row["val_macro_f1"])
        rows.append({"truncation": mode, "max_length": max_length, "c": probe.c,
                     "val_macro_f1": round(best["val_macro_f1"], 4), "val_loss": round(best["val_loss"], 4)})
        log.info("truncation %s, max_length %d: val macro-F1 %.4f (C=%g)", mode, max_length, best["val_macro_f1"],
                 probe.c)
    return rows


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peftqa probe", description=__doc__.splitlines()[0])
    parser.add_argument("--compare-truncation", action="store_true", help="val macro-F1 of the probe per truncation")
    parser.add_argument("--modes", nargs="+", default=["start", "end", "both"], choices=["start", "end", "both"])
    parser.add_argument("--max-lengths", nargs="+", type=int, default=[], help="default: model.max_length")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and how they were made here")
    opts = parser.parse_args(args)
    if not opts.compare_truncation:
        parser.error("nothing to do: pass --compare-truncation (train@base fits the probe in the pipeline)")
    import pandas as pd
    import torch

    from peftqa.cli.bench_reference import describe_environment
    from peftqa.files import write_json_atomic

    environment, started = describe_environment(torch.device("cpu")), time.time()
    rows = compare_truncation(tuple(opts.modes), tuple(opts.max_lengths))
    print(pd.DataFrame(rows).to_markdown(index=False))
    if opts.json:
        write_json_atomic(opts.json, {"command": " ".join(["peftqa probe", *args]), "environment": environment,
                                      "wall_s": round(time.time() - started), "rows": rows})
