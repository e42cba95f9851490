"""Stage prepare: raw PQA-L JSON -> cleaned, stratified train/val/test splits.

Inputs:  data/raw/ori_pqal.json, data/raw/test_ground_truth.json (official protocol); params: prepare.
Outputs: data/processed/{train,val,test}.csv (pmid, question, context, label),
         data/processed/folds.csv (pmid, label, fold: stratified k-fold over all cleaned items; header only when
         prepare.folds is 0), data/processed/split_stats.csv, data/processed/prepare_metrics.json (DVC metrics).
Every record is validated before anything is written, and each file is written atomically, so bad input
leaves the previous data/processed/ untouched.
"""
from __future__ import annotations

import logging

from peftqa.catalog import FOLDS, GROUND_TRUTH_JSON, PREPARE_METRICS, RAW_JSON, SPLIT, SPLIT_STATS
from peftqa.data.dataset import (
    assign_folds,
    clean_items,
    parse_json,
    read_input,
    split_frame,
    split_official,
    split_random,
    split_stats,
    validate_ground_truth,
    validate_records,
)
from peftqa.params import load_params

log = logging.getLogger("peftqa.prepare")


def main(args: list[str]) -> None:
    params = load_params().prepare
    raw_json, truth_json = RAW_JSON.path(), GROUND_TRUTH_JSON.path()
    raw = validate_records(parse_json(read_input(raw_json), str(raw_json)), str(raw_json))
    if params.limit:
        raw = raw[: params.limit]
    items, dropped = clean_items(raw, params.labels, str(raw_json))
    log.info("read %d records; dropped %s; kept %d", len(raw), dropped, len(items))
    if params.protocol == "official":
        truth = validate_ground_truth(parse_json(read_input(truth_json), str(truth_json)), str(truth_json))
        splits = split_official(items, truth, params, str(raw_json), str(truth_json))
    else:
        splits = split_random(items, params, str(raw_json))
    stats = split_stats(splits, params.labels)
    log.info("splits:\n%s", stats.to_string(index=False))
    folds = assign_folds(items, params.folds, params.seed, str(raw_json))
    # everything is validated above; only now is anything written
    for name, split in splits.items():
        SPLIT.write(split_frame(split), split=name)
    SPLIT_STATS.write(stats)
    FOLDS.write(folds)
    PREPARE_METRICS.write({
        "protocol": params.protocol, "n_raw": len(raw), "dropped": dropped, "n_clean": len(items),
        "folds": params.folds,
        "splits": {row["split"]: {k: v for k, v in row.items() if k != "split" and not k.endswith("_pct")}
                   for row in stats.to_dict("records")},
    })


if __name__ == "__main__":
    from peftqa.stops import run_cli

    run_cli(main)
