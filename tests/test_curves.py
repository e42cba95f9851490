"""Stage curves: every method's history in one file per metric, the data of dvc.yaml's top-level plots."""
from __future__ import annotations

import json

import pandas as pd

from stages import curves

HISTORY = {  # base is solved (epoch 0 only); epoch 0 of a tuned method is its start, with no train loss
    "base": pd.DataFrame({"epoch": [0], "train_loss": [0.2], "val_loss": [1.7], "val_macro_f1": [0.56]}),
    "lora": pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [float("nan"), 0.4, 0.3],
                          "val_loss": [1.7, 1.6, 1.65], "val_macro_f1": [0.56, 0.6, 0.58]}),
}


def test_one_row_per_epoch_with_every_method_null_where_it_has_no_value():
    assert curves.curve_rows(HISTORY, "train_loss") == [
        {"epoch": 0, "base": 0.2, "lora": None},
        {"epoch": 1, "base": None, "lora": 0.4},
        {"epoch": 2, "base": None, "lora": 0.3},
    ]
    rows = curves.curve_rows(HISTORY, "val_macro_f1")
    assert [set(row) for row in rows] == [{"epoch", "base", "lora"}] * 3  # DVC needs the first row's keys in all


def test_main_writes_the_methods_in_params(tmp_path, monkeypatch, write_params):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"methods": ["base", "lora"]})
    for method, frame in {**HISTORY, "ia3": HISTORY["lora"]}.items():  # ia3: trained before, not in params now
        (tmp_path / "models" / method).mkdir(parents=True)
        frame.to_csv(tmp_path / "models" / method / "history.csv", index=False)
    curves.main([])
    assert sorted(p.name for p in (tmp_path / "reports/curves").iterdir()) == [
        "train_loss.json", "val_loss.json", "val_macro_f1.json"]
    rows = json.loads((tmp_path / "reports/curves/val_loss.json").read_text())
    assert rows[0] == {"epoch": 0, "base": 1.7, "lora": 1.7} and len(rows) == 3
