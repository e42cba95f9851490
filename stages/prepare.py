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
from peftqa.files import write_csv_atomic, write_json_atomic
from peftqa.params import load_params
from peftqa.paths import DATA_DIR, GROUND_TRUTH_JSON, RAW_JSON

log = logging.getLogger("peftqa.prepare")

SPLITS = ("train", "val", "test")


def main(args: list[str]) -> None:
    params = load_params().prepare
    raw = validate_records(parse_json(read_input(RAW_JSON), str(RAW_JSON)), str(RAW_JSON))
    if params.limit:
        raw = raw[: params.limit]
    items, dropped = clean_items(raw, params.labels, str(RAW_JSON))
    log.info("read %d records; dropped %s; kept %d", len(raw), dropped, len(items))
    if params.protocol == "official":
        truth = validate_ground_truth(parse_json(read_input(GROUND_TRUTH_JSON), str(GROUND_TRUTH_JSON)),
                                      str(GROUND_TRUTH_JSON))
        splits = split_official(items, truth, params, str(RAW_JSON), str(GROUND_TRUTH_JSON))
    else:
        splits = split_random(items, params, str(RAW_JSON))
    stats = split_stats(splits, params.labels)
    log.info("splits:\n%s", stats.to_string(index=False))
    folds = assign_folds(items, params.folds, params.seed, str(RAW_JSON))
    # everything is validated above; only now is anything written
    for name, split in splits.items():
        write_csv_atomic(DATA_DIR / f"{name}.csv", split_frame(split))
    write_csv_atomic(DATA_DIR / "split_stats.csv", stats)
    write_csv_atomic(DATA_DIR / "folds.csv", folds)
    write_json_atomic(DATA_DIR / "prepare_metrics.json", {
        "protocol": params.protocol, "n_raw": len(raw), "dropped": dropped, "n_clean": len(items),
        "folds": params.folds,
        "splits": {row["split"]: {k: v for k, v in row.items() if k != "split" and not k.endswith("_pct")}
                   for row in stats.to_dict("records")},
    })


if __name__ == "__main__":
    from peftqa.stops import run_cli

    run_cli(main)
