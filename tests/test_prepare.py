"""Stage prepare: validation, cleaning and splitting on tiny in-memory PubMedQA-shaped records."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peftqa.data.dataset import (
    Item,
    check_stratifiable,
    clean_items,
    parse_json,
    split_official,
    split_random,
    split_stats,
    validate_ground_truth,
    validate_records,
)
from peftqa.errors import PeftqaError
from peftqa.params import PrepareParams
from stages import prepare

SOURCE = "data/raw/ori_pqal.json"
YES_NO = ("yes", "no")


def record(question="Does drug X lower blood pressure?", contexts=("A randomised trial of 40 patients.",),
           label="yes") -> dict:
    """One PQA-L record as it appears in ori_pqal.json (with one of the extra fields the stage ignores)."""
    return {"QUESTION": question, "CONTEXTS": list(contexts), "final_decision": label, "YEAR": "2001"}


def items(n_yes: int, n_no: int, n_maybe: int = 0) -> list[Item]:
    labels = ["yes"] * n_yes + ["no"] * n_no + ["maybe"] * n_maybe
    return [Item(str(1000 + i), f"Question {i}?", (f"Context {i}.",), label) for i, label in enumerate(labels)]


def pmids(split: list[Item]) -> list[str]:
    return [item.pmid for item in split]


# -----------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("raw, label", [(" Yes ", "yes"), ("NO", "no"), ("maybe\n", "maybe")])
def test_labels_are_normalised(raw, label):
    [item] = validate_records({"7": record(label=raw)}, SOURCE)
    assert item == Item("7", record()["QUESTION"], tuple(record()["CONTEXTS"]), label)


def _without(field):
    rec = record()
    del rec[field]
    return rec


@pytest.mark.parametrize("data, needles", [
    ([record()], ["top level", "list"]),
    ({"7": "not a record"}, ["PMID 7", "object"]),
    ({"7": _without("QUESTION")}, ["PMID 7", "'QUESTION'", "missing"]),
    ({"7": _without("CONTEXTS")}, ["PMID 7", "'CONTEXTS'", "missing"]),
    ({"7": _without("final_decision")}, ["PMID 7", "'final_decision'", "missing"]),
    ({"7": {**record(), "QUESTION": ["a list"]}}, ["PMID 7", "'QUESTION'", "must be a JSON string"]),
    ({"7": {**record(), "CONTEXTS": "one string"}}, ["PMID 7", "'CONTEXTS'", "list of strings"]),
    ({"7": {**record(), "CONTEXTS": ["ok", 3]}}, ["PMID 7", "'CONTEXTS[1]'", "must be a string"]),
    ({"7": {**record(), "final_decision": 1}}, ["PMID 7", "'final_decision'", "must be a JSON string"]),
    ({"7": {**record(), "final_decision": None}}, ["PMID 7", "'final_decision'", "must be a JSON string"]),
    ({"7": record(label="perhaps")}, ["PMID 7", "'final_decision'", "'perhaps'"]),
], ids=["top-level-list", "record-not-object", "no-QUESTION", "no-CONTEXTS", "no-final_decision",
        "QUESTION-list", "CONTEXTS-string", "CONTEXTS-entry-int", "label-int", "label-null", "label-unknown"])
def test_validate_records_names_file_pmid_and_field(data, needles):
    data = {"1": record(), **data} if isinstance(data, dict) else data  # the bad record follows a good one
    with pytest.raises(PeftqaError) as err:
        validate_records(data, SOURCE)
    for needle in [SOURCE, *needles]:
        assert needle in str(err.value)


@pytest.mark.parametrize("text, needle", [
    (b'{"1": {"QUESTION": oops}}', "malformed or truncated JSON at line 1"),
    (b'{"1": {"QUESTION": "Does', "malformed or truncated JSON"),
    (b"", "malformed or truncated JSON"),
    ('{"1": "caf\u00e9"}'.encode("latin-1"), "not UTF-8 text (byte 10)"),
    (b"1" * 5000, "unreadable JSON"),  # past Python's 4300-digit int limit: a ValueError, not a JSONDecodeError
    (b"[" * 100_000, "unreadable JSON"),  # nested too deep for the decoder: a RecursionError
], ids=["malformed", "truncated", "empty", "latin-1", "huge-int", "deep-nesting"])
def test_parse_json_errors_name_the_file(text, needle):
    with pytest.raises(PeftqaError) as err:
        parse_json(text, SOURCE)
    assert str(err.value).startswith(SOURCE) and needle in str(err.value)


def test_validate_ground_truth():
    assert validate_ground_truth({"7": " Yes"}, "gt.json") == {"7": "yes"}
    with pytest.raises(PeftqaError, match="gt.json: PMID 7: label 'perhaps'"):
        validate_ground_truth({"7": "perhaps"}, "gt.json")
    with pytest.raises(PeftqaError, match="gt.json: the top level"):
        validate_ground_truth(["7"], "gt.json")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20)
# PQA-L-shaped records, each field often of the right type, so the fuzz also reaches the later checks
pqa_fields = {
    "QUESTION": st.text(max_size=8) | json_values,
    "CONTEXTS": st.lists(st.text(max_size=8), max_size=3) | st.lists(json_values, max_size=3) | json_values,
    "final_decision": st.sampled_from([" Yes", "no", "MAYBE", "perhaps", ""]) | json_values,
}
pqa_records = st.fixed_dictionaries(pqa_fields) | st.fixed_dictionaries({}, optional=pqa_fields) | json_values
pqa_like = st.dictionaries(st.text(max_size=4), pqa_records, max_size=3)


def _parse_and_validate(text: bytes) -> None:
    try:
        result = validate_records(parse_json(text, SOURCE), SOURCE)
    except PeftqaError:
        return
    assert all(isinstance(item, Item) and item.label in ("yes", "no", "maybe") for item in result)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, pqa_like))
def test_fuzz_json_values_give_items_or_peftqa_error(value):
    _parse_and_validate(json.dumps(value).encode())


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
@example(b"1" * 5000)
@example(b"[" * 100_000)
def test_fuzz_bytes_give_items_or_peftqa_error(text):
    _parse_and_validate(text)


# -----------------------------------------------------------------------------
# cleaning


@pytest.mark.parametrize("bad, rule", [
    (record(label="maybe"), "label_not_kept"),
    (record(question="   "), "empty_question_or_context"),
    (record(contexts=()), "empty_question_or_context"),
    (record(contexts=(" ", "\n\t")), "empty_question_or_context"),
    (record(question="  Does drug X lower blood pressure? ", contexts=("A randomised trial of 40 patients.  ", " ")),
     "duplicate"),
])
def test_each_drop_rule_is_counted(bad, rule):
    raw = validate_records({"1": record(), "2": bad, "3": record(question="Another?")}, SOURCE)
    kept, dropped = clean_items(raw, YES_NO, SOURCE)
    assert pmids(kept) == ["1", "3"]
    assert dropped == {"label_not_kept": 0, "empty_question_or_context": 0, "duplicate": 0, rule: 1}


def test_cleaning_strips_whitespace_and_blank_paragraphs():
    [item] = clean_items([Item("1", " Q? ", (" a ", "  ", "b"), "no")], YES_NO, SOURCE)[0]
    assert item == Item("1", "Q?", ("a", "b"), "no")


def test_same_question_other_contexts_is_not_a_duplicate():
    raw = [Item("1", "Q?", ("a",), "yes"), Item("2", "Q?", ("b",), "yes"), Item("3", "Q?", ("a", "b"), "no")]
    kept, dropped = clean_items(raw, YES_NO, SOURCE)
    assert pmids(kept) == ["1", "2", "3"] and dropped["duplicate"] == 0


def test_conflicting_duplicates_name_both_pmids():
    raw = [Item("111", "Q?", ("a",), "yes"), Item("222", " Q?", ("a ",), "no")]
    with pytest.raises(PeftqaError, match=r"PMID 111 and PMID 222 .*conflicting final_decision"):
        clean_items(raw, YES_NO, SOURCE)


# -----------------------------------------------------------------------------
# splitting


def test_random_split_proportions_are_stratified():
    splits = split_random(items(60, 40), PrepareParams(), SOURCE)
    counts = {name: Counter(item.label for item in split) for name, split in splits.items()}
    assert counts == {"train": {"yes": 48, "no": 32}, "val": {"yes": 6, "no": 4}, "test": {"yes": 6, "no": 4}}


@pytest.mark.parametrize("protocol", ["random", "official"])
def test_splits_are_disjoint_and_cover_every_item(protocol):
    pool = items(60, 40)
    if protocol == "random":
        splits = split_random(pool, PrepareParams(), SOURCE)
    else:
        truth = {item.pmid: item.label for item in pool[::5]}
        splits = split_official(pool, truth, PrepareParams(protocol="official"), SOURCE, "gt.json")
        assert sorted(pmids(splits["test"])) == sorted(truth)
    all_pmids = [pmid for split in splits.values() for pmid in pmids(split)]
    assert sorted(all_pmids) == sorted(pmids(pool))  # every item once: no PMID in two splits


def test_split_is_deterministic_per_seed():
    pool = items(60, 40)
    first, again = (split_random(pool, PrepareParams(seed=1), SOURCE) for _ in range(2))
    other = split_random(pool, PrepareParams(seed=2), SOURCE)
    assert {k: pmids(v) for k, v in first.items()} == {k: pmids(v) for k, v in again.items()}
    assert pmids(first["test"]) != pmids(other["test"])


def test_official_split_refuses_a_label_disagreement():
    pool = items(10, 10)
    with pytest.raises(PeftqaError, match=r"gt.json: PMID 1000: label 'no' disagrees"):
        split_official(pool, {"1000": "no"}, PrepareParams(protocol="official"), SOURCE, "gt.json")


@pytest.mark.parametrize("pool, match", [
    (items(0, 0, 5), "no items left after cleaning"),
    (items(20, 2), r"too few items to stratify: \{'no': 2\}"),
    (items(3, 3), "cannot make a stratified split of 2 items"),  # 6 items: val+test get 1 of each, too few to split
], ids=["filter-leaves-none", "one-class-too-small", "held-out-too-small"])
def test_unsplittable_pools(pool, match):
    kept, _ = clean_items(pool, YES_NO, SOURCE)
    with pytest.raises(PeftqaError, match=match):
        split_random(kept, PrepareParams(), SOURCE)


def test_check_stratifiable_names_the_short_label():
    with pytest.raises(PeftqaError, match=r"\{'maybe': 0\}"):
        check_stratifiable(items(5, 5), ("yes", "no", "maybe"), 2, SOURCE)


def test_split_stats_columns():
    stats = split_stats({"train": items(3, 1), "val": items(1, 1), "test": []}, YES_NO)
    assert list(stats.columns) == ["split", "n", "yes", "no", "yes_pct", "no_pct"]
    assert stats.to_dict("records")[0] == {"split": "train", "n": 4, "yes": 3, "no": 1, "yes_pct": 75.0, "no_pct": 25.0}
    assert stats["n"].tolist() == [4, 2, 0]


# -----------------------------------------------------------------------------
# main: outputs only after validation; bad input leaves the previous outputs as they were

OUTPUTS = ("train.csv", "val.csv", "test.csv", "split_stats.csv", "folds.csv", "prepare_metrics.json")


def good_data(n_yes=30, n_no=20, n_maybe=5) -> dict:
    labels = ["yes"] * n_yes + ["no"] * n_no + ["maybe"] * n_maybe
    return {str(500 + i): record(question=f"Question {i}?", label=label) for i, label in enumerate(labels)}


@pytest.fixture
def stage_dir(tmp_path, monkeypatch, write_params):
    """A working dir for prepare.main: params.yaml, data/raw/, and previous outputs in data/processed/."""
    write_params(tmp_path)
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/processed").mkdir(parents=True)
    for name in OUTPUTS:
        (tmp_path / "data/processed" / name).write_bytes(f"previous {name}\n".encode())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def processed(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "data/processed").iterdir())}


def test_main_writes_splits_and_metrics(stage_dir):
    (stage_dir / "data/raw/ori_pqal.json").write_text(json.dumps(good_data()))
    prepare.main([])
    stats = pd.read_csv(stage_dir / "data/processed/split_stats.csv")
    assert stats[["split", "n", "yes", "no"]].values.tolist() == [["train", 40, 24, 16], ["val", 5, 3, 2],
                                                                  ["test", 5, 3, 2]]
    metrics = json.loads((stage_dir / "data/processed/prepare_metrics.json").read_text())
    assert metrics["n_raw"] == 55 and metrics["n_clean"] == 50 and metrics["dropped"]["label_not_kept"] == 5
    train = pd.read_csv(stage_dir / "data/processed/train.csv", dtype={"pmid": str})
    assert list(train.columns) == ["pmid", "question", "context", "label"] and len(train) == 40
    assert sorted(processed(stage_dir)) == sorted(OUTPUTS)  # no temp files left


@pytest.mark.parametrize("raw", [
    b'{"500": {"QUESTION": "Does',
    b"[]",
    json.dumps({**good_data(), "9": _without("CONTEXTS")}).encode(),
    json.dumps({**good_data(), "9": record(label="perhaps")}).encode(),
    json.dumps(good_data(0, 0, 5)).encode(),
    None,  # no data/raw/ori_pqal.json at all
], ids=["truncated", "top-level-list", "missing-field", "unknown-label", "only-maybe", "missing-file"])
def test_bad_input_leaves_previous_outputs_untouched(stage_dir, raw):
    if raw is not None:
        (stage_dir / "data/raw/ori_pqal.json").write_bytes(raw)
    before = processed(stage_dir)
    with pytest.raises(PeftqaError, match="data/raw/ori_pqal.json"):
        prepare.main([])
    assert processed(stage_dir) == before


def test_cli_reports_bad_input_without_traceback(stage_dir, pipeline_env):
    (stage_dir / "data/raw/ori_pqal.json").write_bytes(json.dumps({"9": record(label="perhaps")}).encode())
    env = {key: value for key, value in pipeline_env.items() if key != "PEFTQA_DEBUG"}
    result = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=stage_dir, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: data/raw/ori_pqal.json: record PMID 9: field 'final_decision'")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -----------------------------------------------------------------------------
# end to end: the real data through `dvc repro prepare` in a throwaway copy of the repo

REAL_JSON = os.environ.get("PUBMEDQA_JSON", "")


def dvc(repo, env, *args) -> str:
    result = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def split_counts(repo) -> list[list]:
    stats = pd.read_csv(repo / "data/processed/split_stats.csv")
    return stats[["split", "n", "yes", "no"]].values.tolist()


@pytest.mark.skipif(not os.path.isfile(REAL_JSON), reason="set PUBMEDQA_JSON to the real ori_pqal.json")
def test_dvc_repro_prepare_on_the_real_data(repo_copy, pipeline_env, write_params, tmp_path):
    # offline with ori_pqal.json alone (no test_ground_truth.json beside it): the default random protocol runs
    lone = tmp_path / "lone" / "ori_pqal.json"
    lone.parent.mkdir()
    shutil.copy(REAL_JSON, lone)
    env = {**pipeline_env, "PUBMEDQA_JSON": str(lone)}
    env.pop("PUBMEDQA_GROUND_TRUTH_JSON", None)
    dvc(repo_copy, env, "repro", "prepare")
    assert split_counts(repo_copy) == [["train", 712, 442, 270], ["val", 89, 55, 34], ["test", 89, 55, 34]]
    assert sorted(p.name for p in (repo_copy / "data/raw").iterdir()) == ["ori_pqal.json"]  # random: no ground truth

    again = dvc(repo_copy, env, "repro", "prepare")
    assert "Running stage" not in again and ("didn't change" in again or "up to date" in again)
    assert "up to date" in dvc(repo_copy, env, "status", "--with-deps", "prepare")  # later stages never ran

    # what `dvc exp run -S prepare.protocol=official` does; the pinned URL made unreachable: this machine is offline
    write_params(repo_copy, {"prepare.protocol": "official", "fetch.ground_truth_url": "http://127.0.0.1:9/x.json"})
    refused = subprocess.run(["dvc", "repro", "prepare"], cwd=repo_copy, env=env, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0
    assert "prepare.protocol: official needs PubMedQA's test_ground_truth.json" in refused.stdout + refused.stderr
    env["PUBMEDQA_GROUND_TRUTH_JSON"] = str(Path(REAL_JSON).parent / "test_ground_truth.json")
    official = dvc(repo_copy, env, "repro", "prepare")
    # fetch reads prepare.protocol: it runs again, to copy the ground truth that only the official protocol needs
    assert "Running stage 'prepare'" in official and "Running stage 'fetch'" in official
    assert sorted(p.name for p in (repo_copy / "data/raw").iterdir()) == ["ori_pqal.json", "test_ground_truth.json"]
    assert split_counts(repo_copy)[2] == ["test", 445, 276, 169]
