"""The catalog of outputs (peftqa/catalog.py): it names exactly what dvc.yaml declares, nothing under peftqa/ or stages/
spells an output's file name beside it, and each output's reader and writer keep the file as it is.
As in test_layout.py, each checker is a function of a root folder (or of a dvc.yaml), and a negative control runs it
on a small synthetic one and sees it fail.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_dvc_deps import ROOT
from test_layout import checked_files, relative, write_tree

from peftqa import catalog
from peftqa.catalog import CATALOG, PRED_COLUMNS, PREDS, SPLIT, Output, predictions_frame
from peftqa.errors import PeftqaError

# what a field may be where a file's name is nothing but its fields: data/processed/{split}.csv, {metric}.json
CHOICES = {"split": "(train|val|test)", "metric": "(" + "|".join(catalog.HISTORY_METRICS) + ")"}
# study files that share a name with a pipeline output but are not one: `peftqa pilot table`'s choices.json, named once
NOT_OUTPUTS = {("peftqa/studies/pilot.py", "choices.json")}


# -----------------------------------------------------------------------------
# a. the catalog and dvc.yaml name the same outputs


def dvc_outputs(dvc: dict, methods: list[str]) -> list[str]:
    """Every out, metric and plot of `dvc` (foreach stages for each of `methods`), and the top-level plots' files."""
    paths = []
    for stage in dvc["stages"].values():
        for item in methods if "foreach" in stage else [None]:
            body = stage["do"] if "foreach" in stage else stage
            for kind in ("outs", "metrics", "plots"):
                for entry in body.get(kind, []):
                    name = next(iter(entry)) if isinstance(entry, dict) else entry
                    paths.append(name.replace("${item}", item) if item else name)
    for plot in dvc.get("plots", []):
        for definition in plot.values():
            paths += list(definition.get("y", {})) if isinstance(definition, dict) else []
    return sorted(set(paths))


def holds(output: Output, path: str, methods: list[str]) -> bool:
    """Whether `path` (a dvc.yaml out) is the output's file or a folder above it."""
    depth = len(path.split("/"))
    prefix = Output("/".join(output.pattern.split("/")[:depth]), "", "", "")
    return re.fullmatch(prefix.regex({"method": f"({'|'.join(methods)})"}).rstrip("/"), path) is not None


def catalog_mismatches(dvc: dict, methods: list[str], outputs: dict[str, Output] = CATALOG) -> list[str]:
    """dvc.yaml's outs that no catalog output is (or holds), and catalog outputs that no dvc.yaml out holds."""
    paths = dvc_outputs(dvc, methods)
    found = [f"dvc.yaml: {path} is not in the catalog" for path in paths
             if not any(holds(output, path, methods) for output in outputs.values())]
    found += [f"catalog: {name} ({output.pattern}) is in no dvc.yaml out" for name, output in outputs.items()
              if not any(holds(output, path, methods) for path in paths)]
    return found


def test_the_catalog_names_what_dvc_yaml_declares():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    methods = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["methods"]
    assert catalog_mismatches(dvc, methods) == []


def test_the_dvc_check_sees_a_stray_out_and_an_undeclared_output():
    dvc = {"stages": {"evaluate": {"foreach": "${methods}", "do": {
        "outs": [{"reports/eval/${item}/preds_val.csv": {"cache": False}}, "reports/eval/${item}/extra.csv"]}}}}
    outputs = {"PREDS": PREDS, "STATS": catalog.STATS}
    assert catalog_mismatches(dvc, ["lora"], outputs) == [
        "dvc.yaml: reports/eval/lora/extra.csv is not in the catalog",
        "catalog: STATS (reports/stats/stats_eval_test.csv) is in no dvc.yaml out"]


# -----------------------------------------------------------------------------
# b. no module but the catalog spells an output's file name


def name_patterns(outputs: dict[str, Output] = CATALOG) -> dict[str, re.Pattern]:
    """{output name: what spelling its file name looks like}: a field stands for any name or `{}` (an f-string's
    value) where the name has letters of its own (preds_{split}.csv), only for CHOICES where it has none
    ({split}.csv); a name of fields alone without choices ({method}.json), or without an extension, is no spelling."""
    patterns: dict[str, re.Pattern] = {}  # the first output of each spelling (METRICS, not FEW_SHOT_METRICS too)
    for name, output in outputs.items():
        bare = re.sub(r"\{\w+\}", "", output.file)
        if "." not in output.file:
            continue
        own = bare.rsplit(".", 1)[0] != ""
        fields = re.findall(r"\{(\w+)\}", output.file)
        if not own and any(field not in CHOICES for field in fields):
            continue
        choices = {field: r"(\{\}|[\w-]+)" if own else CHOICES[field] for field in fields}
        pattern = re.compile(r"(?<![\w-])" + output.regex(choices, of="file") + r"(?![\w-])")
        if pattern not in patterns.values():
            patterns[name] = pattern
    return patterns


def literal_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant that is not a docstring, an f-string as its text with `{}` per value."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found, parts = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts.update(id(value) for value in node.values)
            found.append((node.lineno, "".join(value.value if isinstance(value, ast.Constant) else "{}"
                                               for value in node.values)))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and id(node) not in parts):
            found.append((node.lineno, node.value))
    return found


def spelled_names(root: Path, outputs: dict[str, Output] = CATALOG) -> list[str]:
    """`file:line: text (OUTPUT)` for every string under peftqa/ and stages/ outside the catalog that spells the file
    name of a catalog output."""
    patterns, found = name_patterns(outputs), []
    for path in checked_files(root):
        name = relative(path, root)
        if name == "peftqa/catalog.py":
            continue
        for line, text in literal_strings(ast.parse(path.read_text(encoding="utf-8"))):
            for output, pattern in patterns.items():
                match = pattern.search(text)
                if match and (name, match.group(0)) not in NOT_OUTPUTS:
                    found.append(f"{name}:{line}: {text!r} ({output})")
    return sorted(found)


def test_no_module_but_the_catalog_spells_an_output_s_file_name():
    found = spelled_names(ROOT)
    assert not found, "ask peftqa.catalog for these files:\n" + "\n".join(found)


def test_the_spelling_check_sees_names_and_f_strings_but_not_docstrings(tmp_path):
    write_tree(tmp_path, {
        "peftqa/catalog.py": 'PREDS = "preds_{split}.csv"\n',
        "peftqa/a.py": '"""Writes reports/eval/<m>/preds_test.csv."""\nPATH = "models/lora/train_summary.json"\n',
        "stages/b.py": ('def f(split, folder):\n    """preds_<split>.csv"""\n'
                        '    return folder / f"metrics_{split}.json"\n'),
        "stages/c.py": 'NAMES = ["cv_folds.csv", "table.csv", "val.csv", "frontier.csv"]\n',
    })
    assert spelled_names(tmp_path) == [
        "peftqa/a.py:2: 'models/lora/train_summary.json' (TRAIN_SUMMARY)",
        "stages/b.py:3: 'metrics_{}.json' (METRICS)",
        "stages/c.py:1: 'cv_folds.csv' (CV_FOLDS)",
        "stages/c.py:1: 'val.csv' (SPLIT)",
    ]


# -----------------------------------------------------------------------------
# c. paths, readers and writers


def test_paths_fill_their_fields_under_a_root_or_into_a_folder(tmp_path):
    assert PREDS.path(method="lora", split="test") == Path("reports/eval/lora/preds_test.csv")
    assert PREDS.path(tmp_path, method="lora", split="val") == tmp_path / "reports/eval/lora/preds_val.csv"
    assert catalog.TRAIN_SUMMARY.path(into=tmp_path / "unit") == tmp_path / "unit/train_summary.json"
    # into a folder written whole (the references stage's), the path within that folder
    assert (catalog.REFERENCE_PREDS.path(into=tmp_path, reference="majority", split="test")
            == tmp_path / "majority/preds_test.csv")


def test_a_missing_output_names_the_file_and_the_command_that_makes_it(tmp_path):
    with pytest.raises(PeftqaError, match=r"reports/eval/lora/metrics_test.json not found; run `dvc repro "
                                          r"evaluate@lora` first"):
        catalog.METRICS.read(tmp_path, method="lora", split="test")
    with pytest.raises(FileNotFoundError):  # a reader that knows better why it needs the file can say so
        SPLIT.read(tmp_path, split="train")
    SPLIT.path(tmp_path, split="val").parent.mkdir(parents=True)
    SPLIT.path(tmp_path, split="val").write_text("")
    with pytest.raises(PeftqaError, match=r"val.csv: empty file; run `dvc repro prepare`"):
        SPLIT.read(tmp_path, split="val")


def test_a_csv_without_its_columns_is_refused(tmp_path):
    pd.DataFrame({"epoch": [0], "val_loss": [1.0]}).to_csv(tmp_path / "history.csv", index=False)
    with pytest.raises(PeftqaError, match=r"history.csv: columns \['val_macro_f1', 'train_loss'\] are missing"):
        catalog.HISTORY.read(into=tmp_path)
    with pytest.raises(ValueError, match="expected"):  # a writer with fixed columns writes exactly those
        PREDS.write(pd.DataFrame({"pmid": ["1"]}), tmp_path, method="lora", split="test")


def test_predictions_round_trip_byte_for_byte(tmp_path):
    """An output read and written again is the same file: identifiers stay strings, an unmapped pred stays empty."""
    split = pd.DataFrame({"pmid": ["0123", "456"], "question": ["q", "q"], "context": ["c", "c"],
                          "label": ["yes", "no"]})
    frame = predictions_frame(split, ["yes", None], np.array([0.75, 0.125]))
    assert list(frame.columns) == PRED_COLUMNS and frame["latency_s"].isna().all()
    first = PREDS.write(frame, tmp_path, method="lora", split="test")
    again = PREDS.write(PREDS.read(tmp_path, method="lora", split="test"), tmp_path / "copy", method="lora",
                        split="test")
    assert first.read_bytes() == again.read_bytes()
    assert first.read_text().splitlines() == ["pmid,gold,pred,p_yes,latency_s", "0123,yes,yes,0.75,",
                                              "456,no,,0.125,"]
