"""PubMedQA PQA-L as items: the raw JSON validated record by record, cleaned, and split (random or official, plus
k folds).

Every function takes data and returns data; a bad record raises a PeftqaError naming the file, the record (PMID)
and the field. Stage prepare reads the files and writes the splits.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from peftqa.catalog import RAW_JSON
from peftqa.errors import PeftqaError
from peftqa.params import KNOWN_LABELS, PrepareParams


@dataclass(frozen=True)
class Item:
    pmid: str
    question: str
    contexts: tuple[str, ...]
    label: str


MAX_QUESTION_CHARS = 2_000  # PubMedQA's longest question is under 300 characters; questions are never truncated


def _refuse_duplicate_keys(source: str):
    """json object_pairs_hook: a key given twice (a PMID listed twice) is an error, not a silent overwrite."""
    def hook(pairs: list[tuple[str, object]]) -> dict:
        out = {}
        for key, value in pairs:
            if key in out:
                raise PeftqaError(f"{source}: key {key!r} appears twice in one object (a PMID listed twice?); json "
                                  "would keep only the last one. Remove the duplicate record, then `dvc repro`")
            out[key] = value
        return out
    return hook


def parse_json(text: bytes, source: str) -> object:
    """Decode UTF-8 JSON, turning decoder errors into one sentence with the position; a repeated key is refused."""
    try:
        return json.loads(text.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys(source))
    except UnicodeDecodeError as err:
        raise PeftqaError(f"{source}: not UTF-8 text (byte {err.start}); "
                          "re-download it or check PUBMEDQA_JSON") from None
    except json.JSONDecodeError as err:
        raise PeftqaError(f"{source}: malformed or truncated JSON at line {err.lineno}, column {err.colno} "
                          f"({err.msg}); re-download the file or point PUBMEDQA_JSON at an intact copy, "
                          "then `dvc repro`") from None
    except (ValueError, RecursionError) as err:  # e.g. an integer over 4300 digits, or arrays nested too deep
        raise PeftqaError(f"{source}: unreadable JSON ({err}); re-download the file or point PUBMEDQA_JSON at an "
                          "intact copy, then `dvc repro`") from None


def validate_records(data: object, source: str) -> list[Item]:
    """Check the PQA-L shape {pmid: {QUESTION: str, CONTEXTS: [str], final_decision: str}} and return raw items."""
    if not isinstance(data, dict):
        raise PeftqaError(f"{source}: the top level must be an object of records keyed by PMID, "
                          f"got a JSON {type(data).__name__}; is this PubMedQA's {RAW_JSON.file}?")
    items = []
    for pmid, record in data.items():
        where = f"{source}: record PMID {pmid}"
        if not isinstance(record, dict):
            raise PeftqaError(f"{where}: expected an object, got a JSON {type(record).__name__}")
        for field, kind in (("QUESTION", str), ("CONTEXTS", list), ("final_decision", str)):
            if field not in record:
                raise PeftqaError(f"{where}: field '{field}' is missing; "
                                  "every record needs QUESTION, CONTEXTS and final_decision")
            if not isinstance(record[field], kind):
                raise PeftqaError(f"{where}: field '{field}' must be a JSON "
                                  f"{'string' if kind is str else 'list of strings'}, "
                                  f"got {type(record[field]).__name__}")
        for i, paragraph in enumerate(record["CONTEXTS"]):
            if not isinstance(paragraph, str):
                raise PeftqaError(f"{where}: field 'CONTEXTS[{i}]' must be a string, got {type(paragraph).__name__}")
        if len(record["QUESTION"]) > MAX_QUESTION_CHARS:
            raise PeftqaError(f"{where}: field 'QUESTION' is {len(record['QUESTION'])} characters long, over "
                              f"{MAX_QUESTION_CHARS}; questions are never truncated, so fix or remove the record")
        label = record["final_decision"].strip().lower()
        if label not in KNOWN_LABELS:
            raise PeftqaError(f"{where}: field 'final_decision' is {record['final_decision']!r}; "
                              f"PubMedQA labels are {list(KNOWN_LABELS)}")
        items.append(Item(str(pmid), record["QUESTION"], tuple(record["CONTEXTS"]), label))
    return items


def validate_ground_truth(data: object, source: str) -> dict[str, str]:
    """The official test split: {pmid: label}."""
    if not isinstance(data, dict):
        raise PeftqaError(f"{source}: the top level must be an object PMID -> label, got a JSON {type(data).__name__}")
    for pmid, label in data.items():
        if not isinstance(label, str) or label.strip().lower() not in KNOWN_LABELS:
            raise PeftqaError(f"{source}: PMID {pmid}: label {label!r} is not one of {list(KNOWN_LABELS)}")
    return {str(pmid): label.strip().lower() for pmid, label in data.items()}


def clean_items(items: list[Item], labels: tuple[str, ...], source: str) -> tuple[list[Item], dict[str, int]]:
    """Keep the wanted labels, strip whitespace, drop empty items, deduplicate by (question, contexts)."""
    dropped = {"label_not_kept": 0, "empty_question_or_context": 0, "duplicate": 0}
    seen: dict[tuple[str, tuple[str, ...]], Item] = {}
    kept = []
    for item in items:
        if item.label not in labels:
            dropped["label_not_kept"] += 1
            continue
        question = item.question.strip()
        contexts = tuple(p.strip() for p in item.contexts if p.strip())
        if not question or not contexts:
            dropped["empty_question_or_context"] += 1
            continue
        key = (question, contexts)
        if key in seen:
            if seen[key].label != item.label:
                raise PeftqaError(f"{source}: records PMID {seen[key].pmid} and PMID {item.pmid} "
                                  "have the same QUESTION and CONTEXTS but conflicting final_decision "
                                  f"({seen[key].label!r} vs {item.label!r}); fix or remove one of them")
            dropped["duplicate"] += 1
            continue
        seen[key] = Item(item.pmid, question, contexts, item.label)
        kept.append(seen[key])
    return kept, dropped


def check_stratifiable(items: list[Item], labels: tuple[str, ...], min_per_class: int, source: str) -> None:
    counts = Counter(item.label for item in items)
    if not items:
        raise PeftqaError(f"{source}: no items left after cleaning with prepare.labels={list(labels)}; "
                          "check the labels in params.yaml and the input file")
    short = {label: counts.get(label, 0) for label in labels if counts.get(label, 0) < min_per_class}
    if short:
        raise PeftqaError(f"{source}: too few items to stratify: {short} (need at least {min_per_class} of each label "
                          "in prepare.labels); drop that label from prepare.labels "
                          "or use the full data set (prepare.limit: 0)")


def _stratified(items: list[Item], fraction: float, seed: int, source: str) -> tuple[list[Item], list[Item]]:
    try:
        rest, held = train_test_split(items, test_size=fraction, random_state=seed,
                                      stratify=[item.label for item in items])
    except ValueError as err:
        raise PeftqaError(f"{source}: cannot make a stratified split of {len(items)} items ({err}); "
                          "use more items (prepare.limit: 0) or fewer labels") from None
    return list(rest), list(held)


def split_random(items: list[Item], params: PrepareParams, source: str) -> dict[str, list[Item]]:
    """Stratified train / (val + test), then val / test: 80/10/10 gives the reference's 712/89/89."""
    check_stratifiable(items, params.labels, 3, source)
    held_fraction = params.val_fraction + params.test_fraction
    train, held = _stratified(items, held_fraction, params.seed, source)
    val, test = _stratified(held, params.test_fraction / held_fraction, params.seed, source)
    return {"train": train, "val": val, "test": test}


def split_official(items: list[Item], ground_truth: dict[str, str], params: PrepareParams,
                   source: str, truth_source: str) -> dict[str, list[Item]]:
    """Test = PubMedQA's official test PMIDs; the other items are split stratified into train and val."""
    for item in items:
        if item.pmid in ground_truth and ground_truth[item.pmid] != item.label:
            raise PeftqaError(f"{truth_source}: PMID {item.pmid}: label {ground_truth[item.pmid]!r} disagrees with "
                              f"final_decision {item.label!r} in {source}")
    test = [item for item in items if item.pmid in ground_truth]
    pool = [item for item in items if item.pmid not in ground_truth]
    check_stratifiable(pool, params.labels, 2, source)
    train, val = _stratified(pool, params.val_fraction, params.seed, source)
    return {"train": train, "val": val, "test": test}


def assign_folds(items: list[Item], folds: int, seed: int, source: str) -> pd.DataFrame:
    """Stratified k-fold over every cleaned item: (pmid, label, fold), fold in 0..k-1; empty when folds is 0.
    The cross-validation protocol tests each fold once with a model trained on the others."""
    if folds == 0:
        return pd.DataFrame(columns=["pmid", "label", "fold"])
    labels = [item.label for item in items]
    short = {label: n for label, n in Counter(labels).items() if n < folds}
    if short:
        raise PeftqaError(f"{source}: prepare.folds={folds} needs at least {folds} items of each label, but {short} "
                          "has fewer; lower prepare.folds or use more items (prepare.limit: 0)")
    fold = [0] * len(items)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(labels, labels)):
        for i in held:
            fold[i] = k
    return pd.DataFrame({"pmid": [item.pmid for item in items], "label": labels, "fold": fold})


def split_frame(items: list[Item]) -> pd.DataFrame:
    rows = [{"pmid": it.pmid, "question": it.question, "context": " ".join(it.contexts), "label": it.label}
            for it in items]
    return pd.DataFrame(rows, columns=["pmid", "question", "context", "label"])


def split_stats(splits: dict[str, list[Item]], labels: tuple[str, ...]) -> pd.DataFrame:
    """Counts and shares per split; columns split, n, then <label> and <label>_pct for yes, no (and maybe)."""
    shown = [label for label in KNOWN_LABELS if label in labels]
    rows = []
    for name, items in splits.items():
        counts = Counter(item.label for item in items)
        row = {"split": name, "n": len(items)}
        row.update({label: counts.get(label, 0) for label in shown})
        row.update({f"{label}_pct": round(100 * counts.get(label, 0) / max(len(items), 1), 1) for label in shown})
        rows.append(row)
    return pd.DataFrame(rows)


def read_input(path: Path) -> bytes:
    """The bytes of an input file; a missing one says which stage makes it, instead of a traceback."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PeftqaError(f"{path}: not found; the fetch stage writes it: run `dvc repro prepare` (it runs fetch "
                          "first) or `python -m stages.fetch`, with PUBMEDQA_JSON set when offline") from None
    except OSError as err:
        raise PeftqaError(f"{path}: cannot be read ({err})") from None
