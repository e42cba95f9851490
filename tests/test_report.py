"""Stage report on a tiny, consistent set of upstream files: figures exist, tables equal their sources, prose is honest.

The inputs are written in the formats the upstream stages write, with metrics computed by peftqa.evaluation.metrics so
they agree with the preds; the stats CSV is written by hand (the stats stage is not imported)."""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from peftqa.errors import PeftqaError
from peftqa.evaluation import protocols
from peftqa.evaluation.metrics import (
    abstention_curve,
    classification_metrics,
    confusion_frame,
    latency_summary,
)
from peftqa.evaluation.stats import bootstrap_interval, mcnemar_detectable_difference
from peftqa.report import abstention as report_abstention
from peftqa.report import figures as report_figures
from peftqa.report import findings as report_findings
from peftqa.report import sections as report_sections
from peftqa.report import tables as report_tables
from stages import report

REPO = Path(__file__).resolve().parents[1]
LABELS = ("yes", "no")
METHODS = ("base", "prompt_tuning", "lora")
GOLD = ["yes"] * 12 + ["no"] * 8
PREDS = {
    "base": ["yes"] * 20,  # majority-class collapse
    "prompt_tuning": ["yes"] * 10 + ["no", None] + ["no"] * 3 + ["yes"] * 5,  # one unmapped generation
    "lora": ["yes"] * 11 + ["no"] * 8 + ["yes"],
}
# top label probability of item i: 0.505 + 0.02 i, never on a threshold of report_abstention.ABSTAIN_THRESHOLDS;
# prompt_tuning (it has an unmapped generation: generate scoring) has no p_yes
CONFIDENCE = [0.505 + 0.02 * i for i in range(len(GOLD))]
# 95% CI of Δmacro-F1 vs base: lora's excludes 0, prompt_tuning's contains it
CIS = {"prompt_tuning": (-0.10, 0.30), "lora": (0.15, 0.55)}
REFERENCES = ("majority", "tfidf_lr")  # the rows of every run (refitted per CV fold too)
CALIBRATED = "base_calibrated"  # a row only when base is zero-shot (seq2seq, causal); params.yaml lists it
REFERENCE_PREDS = {"majority": ["yes"] * 20, "tfidf_lr": ["yes"] * 9 + ["no"] * 3 + ["no"] * 6 + ["yes"] * 2,
                   CALIBRATED: ["yes"] * 10 + ["no"] * 2 + ["no"] * 5 + ["yes"] * 3}
ENCODER_WHY = "not defined for the encoder family: its base is a trained probe, not a zero-shot model"
CALIBRATED_CHOICE = {"delta": 2.5, "val_macro_f1": 0.62, "val_macro_f1_at_zero": 0.375, "candidates": 21}
# a generative run: base is worse than base_calibrated, prompt_tuning's CI against it contains 0, lora beats it
CALIBRATED_CIS = {("base", CALIBRATED): (-0.45, -0.05), ("prompt_tuning", CALIBRATED): (-0.20, 0.25),
                  ("lora", CALIBRATED): (0.05, 0.40)}
# 95% CI of Δmacro-F1 (method minus reference): base is the majority (identical: [0, 0]) and worse than tfidf_lr;
# lora beats majority; every other CI contains 0 (so prompt_tuning's paragraph says neither better nor worse)
REFERENCE_CIS = {("base", "majority"): (0.0, 0.0), ("base", "tfidf_lr"): (-0.40, -0.05),
                 ("prompt_tuning", "majority"): (-0.10, 0.30), ("prompt_tuning", "tfidf_lr"): (-0.30, 0.10),
                 ("lora", "majority"): (0.20, 0.60), ("lora", "tfidf_lr"): (-0.10, 0.20)}
FIGURES = ["performance_bar_test.png", "latency_bar_test.png", "param_footprint_bar.png",
           "eval_macro_f1_per_epoch.png", "loss_train_vs_eval.png", "efficiency_panel.png",
           "selective_accuracy_coverage_test.png", *(f"cm_{m}_test.png" for m in METHODS)]


# -----------------------------------------------------------------------------
# fake upstream outputs


def write_params(root: Path, protocol: str) -> None:
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    text = re.sub(r"^methods: .*$", f"methods: [{', '.join(METHODS)}]", text, flags=re.M)
    text = re.sub(r"^  protocol: \w+", f"  protocol: {protocol}", text, flags=re.M)
    (root / "params.yaml").write_text(text, encoding="utf-8")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def write_method(root: Path, method: str, pmids: list[str], index: int, family: str = "encoder") -> dict:
    """history, train summary, preds, confusion and metrics of one method; returns its metrics."""
    trainable = 770 if method == "base" else 10_000 * (index + 1) ** 2
    val_macro_f1 = [0.40 + 0.10 * index, 0.45 + 0.12 * index, 0.44 + 0.16 * index]
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.70, 0.60 - 0.05 * index, 0.55 - 0.10 * index],
                            "val_loss": [0.69, 0.64 - 0.03 * index, 0.62 - 0.05 * index], "val_accuracy": [0.6] * 3,
                            "val_macro_f1": val_macro_f1, "val_f1_yes": [0.7] * 3, "val_f1_no": [0.3] * 3,
                            "seconds": [10.0, 10.5, 9.8]})
    write_csv(root / f"models/{method}/history.csv", history)
    write_json(root / f"models/{method}/train_summary.json", {
        "method": method, "family": family, "model": f"tiny-{family}", "trainable_params": trainable,
        "total_params": 22_700_000, "adapter_bytes": 4 * trainable, "best_val_macro_f1": max(val_macro_f1),
        "best_epoch": 1 + val_macro_f1.index(max(val_macro_f1)),
        "epochs_run": 3, "train_seconds": 30.3 * (index + 1), "examples_per_s": 70.0, "mlflow_run_id": f"run{index}abc",
        "mlflow_experiment_id": "1", "note": "" if index else "linear probe: head on the frozen encoder"})
    pred = PREDS[method]
    latencies = [0.010 + 0.001 * i + 0.002 * index for i in range(len(pmids))]
    p_yes = ([float("nan")] * len(pmids) if method == "prompt_tuning"
             else [c if p == "yes" else 1 - c for p, c in zip(pred, CONFIDENCE)])
    preds = pd.DataFrame({"pmid": pmids, "gold": GOLD, "pred": pred, "p_yes": p_yes, "latency_s": latencies})
    write_csv(root / f"reports/eval/{method}/preds_test.csv", preds)
    write_csv(root / f"reports/eval/{method}/preds_val.csv", preds.assign(pmid=[f"2{p}" for p in pmids]))
    write_csv(root / f"reports/eval/{method}/cm_test.csv", confusion_frame(GOLD, pred, LABELS))
    metrics = {**classification_metrics(GOLD, pred, LABELS), **latency_summary(latencies), "examples_per_s": 70.0,
               "trainable_params_m": trainable / 1e6, "adapter_mb": 4 * trainable / 1e6}
    write_json(root / f"reports/eval/{method}/metrics_test.json", metrics)
    return metrics


def stats_rows(method: str, reference: str, metrics: dict[str, dict], ci: tuple[float, float]) -> list[dict]:
    """The three rows the stats stage writes per comparison, with McNemar b/c counted from the preds."""
    right = {m: [p == g for p, g in zip({**PREDS, **REFERENCE_PREDS}[m], GOLD)] for m in (method, reference)}
    b = sum(r and not o for r, o in zip(right[method], right[reference]))
    c = sum(o and not r for r, o in zip(right[method], right[reference]))
    delta = {k: metrics[method][k] - metrics[reference][k] for k in ("accuracy", "macro_f1")}
    common = {"method": method, "reference": reference, "n": len(GOLD), "b": b, "c": c}
    return [
        {**common, "test": "mcnemar_exact", "metric": "accuracy", "effect": delta["accuracy"], "ci_low": None,
         "ci_high": None, "p_value": 0.0213, "p_holm": 0.0426},
        {**common, "test": "paired_bootstrap", "metric": "accuracy", "effect": delta["accuracy"],
         "ci_low": ci[0] - 0.01, "ci_high": ci[1] + 0.01, "p_value": 0.0312, "p_holm": 0.0624},
        {**common, "test": "paired_bootstrap", "metric": "macro_f1", "effect": delta["macro_f1"],
         "ci_low": ci[0], "ci_high": ci[1], "p_value": 0.00004 if ci[0] > 0 or ci[1] < 0 else 0.31,
         "p_holm": 0.0001},
    ]


def write_reference(root: Path, name: str, pmids: list[str]) -> dict:
    """A reference row's test preds and metrics, as the references stage writes them; returns its metrics."""
    pred = REFERENCE_PREDS[name]
    write_csv(root / f"reports/references/{name}/preds_test.csv", pd.DataFrame(
        {"pmid": pmids, "gold": GOLD, "pred": pred, "p_yes": [0.6 if p == "yes" else 0.4 for p in pred],
         "latency_s": float("nan")}))
    metrics = classification_metrics(GOLD, pred, LABELS)
    write_json(root / f"reports/references/{name}/metrics_test.json", metrics)
    return metrics


def write_choices(root: Path, family: str) -> None:
    """choices.json: base_calibrated has a row only on a generative run, the encoder's base being a trained probe."""
    write_json(root / "reports/references/choices.json", {
        "majority": {"label": "yes"}, "tfidf_lr": {"chosen": {"ngram_max": 1}},
        CALIBRATED: {"not_defined": ENCODER_WHY} if family == "encoder" else CALIBRATED_CHOICE,
        "few_shot": {"not_defined": "not defined: a row these tests leave out"}})


def write_inputs(root: Path, protocol: str = "official", family: str = "encoder") -> dict[str, dict]:
    """Every input of the report stage under `root`; returns the metrics per method and per reference row. On a
    seq2seq or causal run (`family`) base_calibrated is a reference row too."""
    write_params(root, protocol)
    pmids = [str(10_000_001 + i) for i in range(len(GOLD))]
    write_csv(root / "data/processed/test.csv", pd.DataFrame(
        {"pmid": pmids, "question": "q?", "context": "c.", "label": GOLD}))
    write_csv(root / "data/processed/split_stats.csv", pd.DataFrame(
        {"split": ["train", "val", "test"], "n": [160, 20, 20], "yes": [96, 12, 12], "no": [64, 8, 8],
         "yes_pct": [60.0, 60.0, 60.0], "no_pct": [40.0, 40.0, 40.0]}))
    metrics = {m: write_method(root, m, pmids, i, family) for i, m in enumerate(METHODS)}
    rows_of = {**REFERENCE_CIS, **(CALIBRATED_CIS if family != "encoder" else {})}
    metrics.update({r: write_reference(root, r, pmids) for r in dict.fromkeys(r for _, r in rows_of)})
    write_choices(root, family)
    rows = [*stats_rows("prompt_tuning", "base", metrics, CIS["prompt_tuning"]),
            *stats_rows("lora", "base", metrics, CIS["lora"]),
            *stats_rows("lora", "prompt_tuning", metrics, (-0.05, 0.2)),
            *(row for (m, r), ci in rows_of.items() for row in stats_rows(m, r, metrics, ci))]
    write_csv(root / "reports/stats/stats_eval_test.csv", pd.DataFrame(rows))
    return metrics


def run_report(root: Path) -> None:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        report.main([])
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """One full run of the stage under the official protocol (it covers every output, submissions included)."""
    root = tmp_path_factory.mktemp("report")
    metrics = write_inputs(root)
    run_report(root)
    return root, metrics


def parse_tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Every markdown table, keyed by its header line's second cell, as a list of {column: cell} rows."""
    tables, block = {}, []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if block:
            header, _separator, *rows = block
            tables[header[1]] = [dict(zip(header, row, strict=True)) for row in rows]
            block = []
    return tables


def paragraph(markdown: str, start: str) -> str:
    return next(p for p in markdown.split("\n\n") if p.startswith(start))


# -----------------------------------------------------------------------------
# outputs


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_is_a_png(ran: tuple[Path, dict], name: str) -> None:
    path = ran[0] / "reports/figures" / name
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_performance_table_equals_metrics_json(ran: tuple[Path, dict]) -> None:
    root, metrics = ran
    rows = parse_tables((root / "reports/report.md").read_text())["Macro-F1"]
    assert [row["Method"] for row in rows] == [*METHODS, "majority (reference)", "tfidf_lr (reference)"]
    for row in rows[len(METHODS):]:  # reference rows: scored like a method, but neither timed nor trained
        m = metrics[row["Method"].removesuffix(" (reference)")]
        assert (float(row["Macro-F1"]), float(row["Accuracy"])) == (round(m["macro_f1"], 3), round(m["accuracy"], 3))
        assert (float(row["F1 (No)"]), float(row["F1 (Yes)"])) == (round(m["f1_no"], 3), round(m["f1_yes"], 3))
        assert (row["Latency mean / p95 (s)"], row["Trainable Params (M)"]) == ("n/a / n/a", "n/a")
    for row in rows[: len(METHODS)]:
        m = metrics[row["Method"]]
        assert float(row["Macro-F1"]) == round(m["macro_f1"], 3)
        assert float(row["Accuracy"]) == round(m["accuracy"], 3)
        assert float(row["F1 (No)"]) == round(m["f1_no"], 3)
        assert float(row["F1 (Yes)"]) == round(m["f1_yes"], 3)
        mean, p95 = map(float, row["Latency mean / p95 (s)"].split(" / "))
        assert (mean, p95) == (round(m["latency_mean_s"], 4), round(m["latency_p95_s"], 4))
        assert float(row["Trainable Params (M)"]) == float(f"{m['trainable_params_m']:.3g}")  # 3 significant digits


def test_significance_table_equals_stats_csv(ran: tuple[Path, dict]) -> None:
    root, _ = ran
    rows = parse_tables((root / "reports/report.md").read_text())["Test"]
    stats = pd.read_csv(root / "reports/stats/stats_eval_test.csv")
    assert len(rows) == len(stats)
    assert set(stats["reference"]) == {"base", "prompt_tuning", *REFERENCES}
    for row, source in zip(rows, stats.itertuples()):
        reference = f"{source.reference} (reference)" if source.reference in REFERENCES else source.reference
        assert row["Tuned Method"] == (source.method if source.reference == "base"
                                       else f"{source.method} vs {reference}")
        assert float(row["Effect"]) == round(source.effect, 3)
        if pd.isna(source.ci_low):
            assert row["95% CI"] == "—"
        else:
            assert [float(v) for v in row["95% CI"].strip("[]").split(",")] == [round(source.ci_low, 3),
                                                                                round(source.ci_high, 3)]
        p, holm = re.fullmatch(r"p=?(\S+) \(Holm (\S+)\)", row["p-value"]).groups()
        for printed, value in ((p, source.p_value), (holm, source.p_holm)):
            assert printed == "<0.0001" if value < 1e-4 else float(printed) == round(value, 4)
        assert row["Notes"] == f"b={source.b}, c={source.c}"


def test_paragraphs_follow_the_confidence_intervals(ran: tuple[Path, dict]) -> None:
    markdown = (ran[0] / "reports/report.md").read_text()
    lora = paragraph(markdown, "**lora** vs")  # CI excludes 0
    assert "lora is better than base" in lora and "not distinguishable" not in lora
    tuned = paragraph(markdown, "**prompt_tuning** vs")  # CI contains 0
    assert "not distinguishable from noise" in tuned
    assert "better" not in tuned and "worse" not in tuned


def test_every_method_is_judged_against_each_reference_row_by_its_ci(ran: tuple[Path, dict]) -> None:
    markdown = (ran[0] / "reports/report.md").read_text()
    expected = {"**base** (the baseline)": ("base is indistinguishable from majority (reference)",
                                            "base is worse than tfidf_lr (reference)"),
                "**prompt_tuning** vs": ("prompt_tuning is indistinguishable from majority (reference)",
                                         "prompt_tuning is indistinguishable from tfidf_lr (reference)"),
                "**lora** vs": ("lora beats majority (reference)",
                                "lora is indistinguishable from tfidf_lr (reference)")}
    for start, sentences in expected.items():
        text = paragraph(markdown, start)
        for sentence in sentences:
            assert sentence in text
    assert "Δ macro-F1 +0.000, 95% CI [+0.000, +0.000]" in paragraph(markdown, "**base** (the baseline)")


@pytest.mark.parametrize(("ci", "verdict"), [((-0.1, 0.2), "is indistinguishable from"), ((0.05, 0.2), "beats"),
                                             ((-0.3, -0.02), "is worse than"),
                                             ((0.0, 0.0), "is indistinguishable from")])
def test_reference_verdict_follows_ci(ci: tuple[float, float], verdict: str) -> None:
    metrics = {"lora": {"macro_f1": 0.5, "accuracy": 0.7}, "majority": {"macro_f1": 0.4, "accuracy": 0.6}}
    stats = pd.DataFrame(stats_rows("lora", "majority", metrics, ci))
    text = report_findings.describe_against_references("lora", ["majority"], stats, confidence=0.95)
    assert f"lora {verdict} majority (reference)" in text
    assert sum(word in text for word in ("beats", "worse", "indistinguishable")) == 1
    assert report_findings.describe_against_references("lora", [], stats, confidence=0.95) == ""


# -----------------------------------------------------------------------------
# base_calibrated: a row on a generative run, a sentence saying why not on an encoder run


@pytest.fixture(scope="module")
def ran_generative(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """One run of the stage on a causal run's inputs: base is zero-shot, so base_calibrated is a reference row."""
    root = tmp_path_factory.mktemp("report_generative")
    metrics = write_inputs(root, protocol="random", family="causal")
    run_report(root)
    return root, metrics


def test_encoder_report_says_why_base_calibrated_has_no_row(ran: tuple[Path, dict]) -> None:
    markdown = (ran[0] / "reports/report.md").read_text()
    assert f" `{CALIBRATED}`: {ENCODER_WHY}." in paragraph(markdown, "Unmapped predictions")  # under the table
    assert f"{CALIBRATED} (reference)" not in markdown and "label prior?" not in markdown


def test_generative_report_has_base_calibrated_in_every_table(ran_generative: tuple[Path, dict]) -> None:
    root, metrics = ran_generative
    markdown = (root / "reports/report.md").read_text()
    tables = parse_tables(markdown)
    performance = {row["Method"]: row for row in tables["Macro-F1"]}
    row = performance[f"{CALIBRATED} (reference)"]
    assert float(row["Macro-F1"]) == round(metrics[CALIBRATED]["macro_f1"], 3)
    assert (row["Latency mean / p95 (s)"], row["Trainable Params (M)"]) == ("n/a / n/a", "n/a")
    label = f"{CALIBRATED} (reference)"
    against = [row["Tuned Method"] for row in tables["Test"] if row["Tuned Method"].endswith(label)]
    assert against == [f"{m} vs {label}" for m in METHODS for _ in range(3)]  # 3 tests each
    note = paragraph(markdown, "Unmapped predictions")  # under the performance table
    assert (f"`{CALIBRATED}` is the zero-shot base with one offset δ = +2.500 on its margin log p(yes) − log p(no)"
            in note and "(0.620 there, 0.375 at δ = 0), never on test" in note and f"`{CALIBRATED}`: not defined"
            not in note)


def test_generative_findings_say_whether_each_method_learned_more_than_the_prior(
        ran_generative: tuple[Path, dict]) -> None:
    markdown = (ran_generative[0] / "reports/report.md").read_text()
    label = f"{CALIBRATED} (reference)"
    base = paragraph(markdown, "**base** (the baseline)")
    assert f"base is worse than {label}" in base and "label prior?" not in base  # base_calibrated is built from it
    lora = paragraph(markdown, "**lora** vs")
    assert f"Learned more than the label prior? yes: lora beats {label} (Δ macro-F1" in lora
    assert lora.count(label) == 1  # said once, as the claim, not again among the other reference rows
    tuned = paragraph(markdown, "**prompt_tuning** vs")
    assert (f"Learned more than the label prior? undecidable at this size (n=20): the CI of prompt_tuning against "
            f"{label} contains 0 (Δ macro-F1" in tuned)


@pytest.mark.parametrize(("ci", "p_holm", "answer"), [
    ((0.05, 0.2), 0.0001, "yes: lora beats base_calibrated (reference)"),
    ((-0.3, -0.02), 0.0001, "no: lora is worse than base_calibrated (reference)"),
    ((-0.1, 0.2), 0.0001, "undecidable at this size (n=20)"),
    ((0.0, 0.0), 0.0001, "undecidable at this size (n=20)"),
    ((0.05, 0.2), 0.2, "yes: lora beats base_calibrated (reference)"),
])
def test_learned_more_than_the_prior_follows_the_ci(ci: tuple[float, float], p_holm: float, answer: str) -> None:
    metrics = {"lora": {"macro_f1": 0.5, "accuracy": 0.7}, CALIBRATED: {"macro_f1": 0.4, "accuracy": 0.6}}
    stats = pd.DataFrame(stats_rows("lora", CALIBRATED, metrics, ci)).assign(p_holm=p_holm)
    text = report_findings.describe_against_prior("lora", [CALIBRATED], stats, confidence=0.95)
    assert text.startswith(f" Learned more than the label prior? {answer}")
    assert ("suggestive only after Holm correction" in text) == (p_holm > 0.05)
    assert report_findings.describe_against_prior("lora", ["majority"], stats, confidence=0.95) == ""
    assert report_findings.describe_against_prior("base", [CALIBRATED], stats, confidence=0.95) == ""


def test_references_note_says_why_a_reference_is_not_defined() -> None:
    why = "not defined for prepare.labels ['yes', 'no', 'maybe']: it needs exactly the two labels yes and no"
    note = report_sections.references_note(["majority"], {"majority": {"label": "yes"},
                                                          CALIBRATED: {"not_defined": why}})
    assert note.startswith(" Reference rows (stage `references`) are not trained methods: `majority` always answers")
    assert note.endswith(f" `{CALIBRATED}`: {why}.")
    assert report_sections.references_note([], {CALIBRATED: {"not_defined": why}}) == f" `{CALIBRATED}`: {why}."


def test_report_states_the_smallest_detectable_difference(ran: tuple[Path, dict]) -> None:
    """Against base: prompt_tuning b=3, c=2 and lora b=7, c=1 of 20 items, so (b+c)/n = 0.25 and 0.40, mean 0.325;
    with only 20 items the difference needed at 0.25 and at the mean would exceed ψ ('none'); at 0.40 the exact test's
    power reaches 80% at 0.383 (Connor's normal approximation would say 0.373)."""
    text = paragraph((ran[0] / "reports/report.md").read_text(), "Smallest detectable difference")
    assert "n = 20 test items" in text and "α = 0.05" in text and "80% power is none" in text
    assert "(b+c)/n = 0.325, the mean over the comparisons against the baseline `base`" in text
    assert "prompt_tuning 0.250 → none, lora 0.400 → 0.383" in text and "'none': even a method" in text


def test_detectable_difference_sentence_at_the_default_test_size() -> None:
    """89 items, b + c = 31 and 33 against the baseline: mean ψ = 32/89; each value from
    mcnemar_detectable_difference."""
    stats = pd.DataFrame([{"method": m, "reference": "base", "test": "mcnemar_exact", "metric": "accuracy", "n": 89,
                           "b": b, "c": c} for m, b, c in (("prompt_tuning", 19, 12), ("lora", 17, 16))])
    text = report_findings.detectable_difference_sentence(stats, ["base", "prompt_tuning", "lora"], "base",
                                                          REFERENCES, 89)
    mean = mcnemar_detectable_difference(89, 32 / 89)
    assert f"80% power is {mean:.3f}, at the discordance rate (b+c)/n = {32 / 89:.3f}" in text
    assert f"prompt_tuning {31 / 89:.3f} → {mcnemar_detectable_difference(89, 31 / 89):.3f}" in text
    assert "'none'" not in text and 0.18 < mean < 0.19 and "exact McNemar" in text
    only_baseline = pd.DataFrame([{"method": "base", "reference": r, "test": "mcnemar_exact", "metric": "accuracy",
                                   "n": 89, "b": 10, "c": 20} for r in REFERENCES])
    text = report_findings.detectable_difference_sentence(only_baseline, ["base"], "base", REFERENCES, 89)
    assert "the mean over the baseline's comparisons against the reference rows" in text
    assert "base vs majority (reference) 0.337" in text


def test_performance_figure_shows_the_reference_rows() -> None:
    metrics = {"base": {"accuracy": 0.6, "macro_f1": 0.4}, "lora": {"accuracy": 0.7, "macro_f1": 0.6}}
    figure = report_figures.plot_performance(metrics, 20, {"majority": {"accuracy": 0.6, "macro_f1": 0.375},
                                                   "tfidf_lr": {"accuracy": 0.65, "macro_f1": 0.5}})
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "lora", "majority\n(reference)",
                                                            "tfidf_lr\n(reference)"]
    assert "0.375" in [t.get_text() for t in ax.texts]
    report_figures.plt.close(figure)


def test_performance_bars_carry_each_rows_bootstrap_interval() -> None:
    """The interval drawn is bootstrap_interval's, around each bar's value; 40 items, 30 right: accuracy 0.75."""
    gold = ["yes"] * 20 + ["no"] * 20
    pred = ["yes"] * 20 + ["no"] * 10 + ["yes"] * 10
    interval = bootstrap_interval(gold, pred, ("yes", "no"), 2000, 0, 0.95)
    low, high = interval["accuracy"]
    assert low < 0.75 < high and 0.1 < high - low < 0.4  # about ±1.96 * sqrt(.75 * .25 / 40) = ±0.134
    assert bootstrap_interval(gold, gold, ("yes", "no"), 2000, 0, 0.95)["macro_f1"] == (1.0, 1.0)
    metrics = {"lora": {"accuracy": 0.75, "macro_f1": 0.7333}}
    figure = report_figures.plot_performance(metrics, 40, None, {"lora": interval}, 0.95)
    ax = figure.axes[0]
    caps = [line for line in ax.lines if len(line.get_ydata()) == 1]  # an error bar's caps: one point each
    assert sorted(round(float(line.get_ydata()[0]), 6) for line in caps)[:2] == sorted(
        [round(interval["accuracy"][0], 6), round(interval["macro_f1"][0], 6)])
    assert "95% bootstrap intervals" in ax.get_title()
    report_figures.plt.close(figure)


def test_collapsed_baseline_is_called_out(ran: tuple[Path, dict]) -> None:
    markdown = (ran[0] / "reports/report.md").read_text()
    assert "majority-class collapse" in paragraph(markdown, "**base** (the baseline)")
    assert "collapse" not in paragraph(markdown, "**lora** vs")


def test_report_states_protocol_and_mlflow_runs(ran: tuple[Path, dict]) -> None:
    markdown = (ran[0] / "reports/report.md").read_text()
    assert "`prepare.protocol: official`" in markdown and "n = 20 test items" in markdown
    assert [row["MLflow run id"] for row in parse_tables(markdown)["MLflow run id"]] == ["`run0abc`", "`run1abc`",
                                                                                        "`run2abc`"]
    for name in FIGURES:
        assert f"(figures/{name})" in markdown


def test_official_protocol_writes_submissions_without_unmapped(ran: tuple[Path, dict]) -> None:
    root, _ = ran
    test = pd.read_csv(root / "data/processed/test.csv", dtype={"pmid": str})
    lora = json.loads((root / "reports/submission/lora.json").read_text())
    assert lora == dict(zip(test["pmid"], PREDS["lora"]))
    tuned = json.loads((root / "reports/submission/prompt_tuning.json").read_text())
    assert len(tuned) == len(test) - 1 and set(tuned.values()) <= set(LABELS)
    markdown = (root / "reports/report.md").read_text()
    assert "`submission/prompt_tuning.json`: 1 unmapped prediction(s) left out" in markdown


def test_abstention_table_counts_the_answered_items(ran: tuple[Path, dict]) -> None:
    """lora at P = 0.70 answers items 10..19 (confidence 0.705 and up): 8 of the 10 right, F1 yes 1/2, no 7/8."""
    markdown = (ran[0] / "reports/report.md").read_text()
    rows = parse_tables(markdown)["P"]
    # no p_yes for prompt_tuning; base and lora answer nothing at 0.90 (top confidence 0.885) on either split
    assert [(row["Method"], row["P"]) for row in rows] == [
        (m, p) for m in ("base", "lora") for p in ("0.50", "0.55", "0.60", "0.65", "0.70", "0.80")]
    lora = next(row for row in rows if (row["Method"], row["P"]) == ("lora", "0.70"))
    assert (lora["Test answered"], lora["Test coverage"], lora["Test accuracy"]) == ("10/20", "0.50", "0.800")
    assert float(lora["Test macro-F1"]) == pytest.approx((0.5 + 0.875) / 2, abs=5e-4)
    base = next(row for row in rows if (row["Method"], row["P"]) == ("base", "0.80"))
    assert (base["Val answered"], base["Val accuracy"]) == ("5/20", "0.000")  # items 15..19, all gold 'no'
    assert "## Abstention: accuracy and coverage as the threshold moves" in markdown
    assert "Not shown: prompt_tuning (no p_yes" in paragraph(markdown, "`peftqa predict --abstain-below P`")
    assert "train majority class 'yes' scores 0.600 on test" in markdown
    chosen = paragraph(markdown, "Choose P on val")  # val preds equal the test preds here
    assert "base: no P does" in chosen
    assert ("lora: P = 0.50 (val: 20 answered, accuracy 0.900), which on test answers 20/20 with accuracy 0.900"
            in chosen)
    assert "figures/selective_accuracy_coverage_test.png" in chosen


# -----------------------------------------------------------------------------
# error paths and pure helpers


def edit_csv(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    edit(pd.read_csv(path, dtype={"pmid": str})).to_csv(path, index=False)


def replace_first_pmid(preds: pd.DataFrame) -> pd.DataFrame:
    return preds.assign(pmid=["99999999", *preds["pmid"][1:]])


STALE_INPUTS = {  # failure mode -> (file, edit, expected message)
    "preds of another split": ("reports/eval/lora/preds_test.csv", replace_first_pmid, r"'lora' is stale.*dvc repro"),
    "stats without a method": ("reports/stats/stats_eval_test.csv", lambda f: f[f["method"] != "lora"],
                               r"0 rows for lora vs base.*dvc repro"),
    "an upstream output missing": ("models/lora/train_summary.json", None,
                                   r"train_summary.json is missing; run `dvc repro`"),
    "a method's history missing": ("models/lora/history.csv", None,
                                   r"models/lora/history.csv not found; run `dvc repro train@lora`"),
    "reference preds of another split": ("reports/references/tfidf_lr/preds_test.csv", replace_first_pmid,
                                         r"reference 'tfidf_lr' is stale.*`dvc repro references`"),
    "stats without reference rows": ("reports/stats/stats_eval_test.csv",
                                     lambda f: f[~f["reference"].isin(REFERENCES)],
                                     r"0 rows for base vs majority.*dvc repro"),
    "a reference output missing": ("reports/references/majority/metrics_test.json", None,
                                   r"references/majority/metrics_test.json is missing; run `dvc repro`"),
    "val preds of another split": ("reports/eval/lora/preds_val.csv", lambda f: f.iloc[:-1],
                                   r"preds_val.csv has 19 rows, and 20 val items were to be scored.*dvc repro"),
}


@pytest.mark.parametrize("failure", list(STALE_INPUTS))
def test_stale_or_missing_inputs_raise(tmp_path: Path, failure: str) -> None:
    relative, edit, message = STALE_INPUTS[failure]
    write_inputs(tmp_path)
    if edit is None:
        (tmp_path / relative).unlink()
    else:
        edit_csv(tmp_path / relative, edit)
    with pytest.raises(PeftqaError, match=message):
        run_report(tmp_path)
    assert not (tmp_path / "reports/report.md").exists()


def test_performance_table_prints_every_cell_as_its_column_rounds_it() -> None:
    metrics = {"base": {"macro_f1": 0.4444, "accuracy": 0.6, "f1_yes": 0.75, "f1_no": 0.0, "latency_mean_s": 0.01,
                        "latency_p95_s": 0.02, "trainable_params_m": 0.00077},
               "majority (reference)": {"macro_f1": 0.375, "accuracy": 0.6, "f1_yes": 0.75, "f1_no": 0.0,
                                        "latency_mean_s": float("nan"), "latency_p95_s": float("nan"),
                                        "trainable_params_m": float("nan")}}
    columns = report_tables.performance_columns(LABELS)
    rows = parse_tables(report_tables.performance_table(metrics, columns))["Macro-F1"]
    assert rows == [
        {"Method": "base", "Macro-F1": "0.444", "Accuracy": "0.600", "F1 (No)": "0.000", "F1 (Yes)": "0.750",
         "Latency mean / p95 (s)": "0.0100 / 0.0200", "Trainable Params (M)": "0.000770"},
        {"Method": "majority (reference)", "Macro-F1": "0.375", "Accuracy": "0.600", "F1 (No)": "0.000",
         "F1 (Yes)": "0.750", "Latency mean / p95 (s)": "n/a / n/a", "Trainable Params (M)": "n/a"}]


@pytest.mark.parametrize(("ci", "verdict"), [((-0.1, 0.2), "not distinguishable"), ((0.05, 0.2), "is better than"),
                                             ((-0.3, -0.02), "is worse than")])
def test_describe_method_verdict_follows_ci(ci: tuple[float, float], verdict: str) -> None:
    metrics = {"base": {"macro_f1": 0.4, "accuracy": 0.6}, "lora": {"macro_f1": 0.5, "accuracy": 0.7}}
    stats = pd.DataFrame(stats_rows("lora", "base", {m: {**v} for m, v in metrics.items()}, ci))
    text = report_findings.describe_method("lora", "base", metrics, stats, confidence=0.95)
    assert verdict in text
    assert sum(word in text for word in ("better", "worse", "not distinguishable")) == 1


@pytest.mark.parametrize(("value", "digits", "significant", "printed"), [
    (0.71234, 3, False, "0.712"), (0.000769, 3, True, "0.000769"), (22.71, 3, True, "22.7"),
    (2848.3, 3, True, "2850"), (0.0009996, 3, True, "0.00100"), (float("nan"), 4, False, "n/a")])
def test_format_number(value: float, digits: int, significant: bool, printed: str) -> None:
    assert report_tables.format_number(value, digits, significant) == printed


def test_figures_accept_a_zero_shot_baseline() -> None:
    """seq2seq/causal base trains nothing: 0 params on a log axis, one epoch-0 row without a train loss."""
    summary = {"base": {"trainable_params": 0, "train_seconds": 0.0, "best_epoch": 0, "best_val_macro_f1": 0.4,
                        "note": "zero-shot: no training"},
               "lora": {"trainable_params": 294_912, "train_seconds": 120.0, "best_epoch": 2, "best_val_macro_f1": 0.6,
                        "note": ""}}
    history = {"base": pd.DataFrame({"epoch": [0], "train_loss": [float("nan")], "val_loss": [0.7],
                                     "val_macro_f1": [0.4]}),
               "lora": pd.DataFrame({"epoch": [1, 2], "train_loss": [0.6, 0.5], "val_loss": [0.65, 0.6],
                                     "val_macro_f1": [0.55, 0.6]})}
    metrics = {"base": {"macro_f1": 0.4}, "lora": {"macro_f1": 0.6}}
    figures = [report_figures.plot_param_footprint(summary), report_figures.plot_losses(history),
               report_figures.plot_val_macro_f1(history, summary), report_figures.plot_efficiency(metrics, summary)]
    labels = [text.get_text() for text in figures[0].axes[0].texts]
    assert labels == ["0", "295K"]
    for figure in figures:
        figure.savefig(io.BytesIO(), format="png")
        report_figures.plt.close(figure)


# -----------------------------------------------------------------------------
# abstention helpers


def test_abstention_curve_by_hand() -> None:
    """Answered: confidence >= P, as --abstain-below (0.9 answers the 0.9 item). At 0.92 only a 'yes' is answered:
    F1 (no) is 0 without support, so macro-F1 is 0.5 although the one answer is right."""
    curve = abstention_curve(["yes", "no", "yes", "no"], ["yes", "no", "no", "yes"], [0.95, 0.9, 0.7, 0.55],
                             [0.5, 0.9, 0.92, 0.99], LABELS)
    assert list(curve["answered"]) == [4, 2, 1, 0]
    assert list(curve["coverage"]) == [1.0, 0.5, 0.25, 0.0]
    assert list(curve["accuracy"][:3]) == [0.5, 1.0, 1.0] and np.isnan(curve["accuracy"][3])
    assert list(curve["macro_f1"][:3]) == [0.5, 1.0, 0.5] and np.isnan(curve["macro_f1"][3])


@pytest.mark.parametrize(("confidence", "message"), [([0.9, 0.8], "differ in length"),
                                                     ([0.9, float("nan"), 0.7], "1 confidence value.*NaN")])
def test_abstention_curve_refuses_bad_confidence(confidence: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        abstention_curve(["yes", "no", "yes"], ["yes", "no", "no"], confidence, [0.5], LABELS)


def test_confidence_is_the_top_label_probability() -> None:
    assert list(report_abstention.confidence_from_p_yes([0.2, 0.5, 0.9, 0.35])) == pytest.approx([0.8, 0.5, 0.9, 0.65])


def test_abstention_frame_steps_through_every_distinct_confidence() -> None:
    """Confidences 0.9, 0.8, 0.6, 0.55; the unmapped generation (NaN pred) counts as wrong."""
    preds = {"lora": pd.DataFrame({"gold": ["yes", "no", "yes", "no"], "pred": ["yes", "no", None, "yes"],
                                   "p_yes": [0.9, 0.2, 0.6, 0.55]})}
    frame = report_abstention.abstention_frame(preds, LABELS)
    assert list(frame["threshold"]) == pytest.approx([0.55, 0.6, 0.8, 0.9])
    assert list(frame["answered"]) == [4, 3, 2, 1]
    assert list(frame["accuracy"]) == pytest.approx([0.5, 2 / 3, 1.0, 1.0])
    assert set(frame["method"]) == {"lora"}


def test_split_scored_methods_skips_missing_p_yes_and_three_labels() -> None:
    preds = {"lora": pd.DataFrame({"p_yes": [0.7, 0.4]}), "base": pd.DataFrame({"p_yes": [float("nan")] * 2})}
    assert report_abstention.split_scored_methods(preds, LABELS) == (["lora"], ["base"])
    assert report_abstention.split_scored_methods(preds, ("yes", "no", "maybe")) == ([], ["lora", "base"])


def test_choose_threshold_takes_the_lowest_p_reaching_the_target_on_enough_items() -> None:
    val = pd.DataFrame({"method": ["a", "a", "a", "b", "b"], "threshold": [0.5, 0.6, 0.7, 0.5, 0.9],
                        "answered": [20, 12, 5, 20, 3], "accuracy": [0.6, 0.75, 0.8, 0.6, 1.0]})
    assert report_abstention.choose_threshold(val, target_accuracy=0.7, min_answered=10) == {"a": 0.6, "b": None}
    assert report_abstention.choose_threshold(val, target_accuracy=0.7, min_answered=3) == {"a": 0.6, "b": 0.9}


def test_majority_class_comes_from_train_and_is_scored_on_test() -> None:
    split_stats = pd.DataFrame({"split": ["train", "val", "test"], "n": [160, 20, 20], "yes": [96, 12, 8],
                                "no": [64, 8, 12]})
    assert report_abstention.majority_class_accuracy(split_stats, LABELS) == ("yes", 0.4)


def test_abstention_without_label_probabilities_says_so() -> None:
    preds = {"base": pd.DataFrame({"gold": ["yes"], "pred": ["yes"], "p_yes": [float("nan")]})}
    section = report_abstention.abstention_section(preds, preds, pd.DataFrame(), LABELS)
    assert "No method has label probabilities" in section and "Not shown: base" in section
    figure = report_figures.plot_selective_accuracy(report_abstention.abstention_frame({}, LABELS), ("yes", 0.6), 20)
    figure.savefig(io.BytesIO(), format="png")
    report_figures.plt.close(figure)


# -----------------------------------------------------------------------------
# the protocols stage's tables: repeated seeds and cross-validation


def write_protocols(root: Path, seeds: list[int], folds: int) -> None:
    """params asking for `seeds` and `folds`, and the protocols stage's tables for methods base and lora."""
    text = (root / "params.yaml").read_text(encoding="utf-8")
    text = re.sub(r"^seeds: \[\]", f"seeds: {seeds}", text, flags=re.M)
    text = re.sub(r"^  folds: 0", f"  folds: {folds}", text, flags=re.M)
    text = re.sub(r"^methods: .*$", "methods: [base, lora]", text, flags=re.M)
    (root / "params.yaml").write_text(text, encoding="utf-8")
    runs = pd.DataFrame({"method": ["base", "lora", "base", "lora"], "seed": [1, 1, 2, 2], "n": 20,
                         "accuracy": [0.5, 0.6, 0.5, 0.8], "macro_f1": [0.4, 0.5, 0.3, 0.6]})
    gold = ["yes", "no"] * 100  # 200 items: every item of split_stats, once
    rows = {"base": ["yes"] * 200, "lora": gold[:150] + ["yes"] * 50, **{r: ["yes"] * 200 for r in REFERENCES}}
    preds = pd.DataFrame({"method": [m for m in rows for _ in range(200)], "fold": [0, 1] * 100 * len(rows),
                          "pmid": [str(i) for i in range(200)] * len(rows), "gold": gold * len(rows),
                          "pred": [p for pred in rows.values() for p in pred], "p_yes": 0.5})
    folder = root / "reports/protocols"
    write_csv(folder / "seeds_test.csv", runs)
    write_csv(folder / "seeds_summary.csv", protocols.seeds_summary(runs, "base"))
    write_csv(folder / "cv_folds.csv", protocols.cv_fold_metrics(preds, LABELS))
    write_csv(folder / "cv_stats.csv", pd.DataFrame(stats_rows("lora", "base", {
        "lora": {"accuracy": 0.875, "macro_f1": 0.87}, "base": {"accuracy": 0.5, "macro_f1": 0.333}}, (0.4, 0.6)))
        .assign(n=200))


def keep_base_and_lora(stats: pd.DataFrame) -> pd.DataFrame:
    """The stats rows of methods [base, lora]: lora vs base, and both against each reference row."""
    return stats[stats["method"].isin(["base", "lora"]) & stats["reference"].isin(["base", *REFERENCES])]


def test_without_the_protocols_stage_the_sections_say_how_to_run_them(ran: tuple[Path, dict]) -> None:
    markdown = (ran[0] / "reports/report.md").read_text()
    assert paragraph(markdown, "Not run. Set `seeds: [1, 2, 3]`")
    assert paragraph(markdown, "Not run. Set `prepare.folds: 5`")
    protocol = "Protocol: one training run per method (train seed 42) on the `official` split"
    assert "## Test performance\n\n" + protocol in markdown
    assert "## Significance\n\n" + protocol in markdown


def test_repeated_seeds_and_cv_tables_come_from_the_protocols_stage(tmp_path: Path) -> None:
    write_inputs(tmp_path)
    write_protocols(tmp_path, seeds=[1, 2], folds=2)
    edit_csv(tmp_path / "reports/stats/stats_eval_test.csv", keep_base_and_lora)
    run_report(tmp_path)
    markdown = (tmp_path / "reports/report.md").read_text()
    seeds = {row["Method"]: row for row in parse_tables(markdown)["Seeds"]}
    assert (seeds["lora"]["Accuracy"], seeds["lora"]["Macro-F1"]) == ("0.700 ± 0.141", "0.550 ± 0.071")
    assert seeds["lora"]["Macro-F1 range"] == "0.500 – 0.600"
    assert seeds["lora"]["Δ macro-F1 vs base"] == "0.200 ± 0.141"  # per seed: +0.1, +0.3
    assert seeds["base"]["Δ macro-F1 vs base"] == "—"
    assert "train seeds 1, 2 on the main split" in markdown
    cv = {row["Method"]: row for row in parse_tables(markdown)["n"]}
    assert (cv["lora"]["n"], cv["lora"]["Pooled accuracy"]) == ("200", "0.875")
    assert cv["majority (reference)"]["Pooled accuracy"] == "0.500"  # the reference rows, refitted per fold
    assert "stratified 2-fold cross-validation over all n = 200 cleaned items" in markdown
    assert f"`{CALIBRATED}` is not (it calibrates evaluate@base's val predictions" in markdown
    assert "Paired tests on the pooled predictions (same protocol, n = 200)" in markdown
    assert (tmp_path / "reports/figures/seeds_macro_f1_test.png").stat().st_size > 0
    assert "(figures/seeds_macro_f1_test.png)" in markdown


@pytest.mark.parametrize("seeds, folds, message", [
    ([1, 2, 3], 2, r"seeds_test.csv is stale \(it has 4 runs, params ask for seeds \[1, 2, 3\]"),
    ([1, 2], 3, r"cv_folds.csv is stale \(it has 8 fold rows, params ask for prepare.folds 3"),
])
def test_protocol_tables_of_other_params_are_refused(tmp_path: Path, seeds, folds, message) -> None:
    write_inputs(tmp_path)
    write_protocols(tmp_path, seeds=[1, 2], folds=2)
    text = (tmp_path / "params.yaml").read_text()
    text = re.sub(r"^seeds: .*$", f"seeds: {seeds}", text, flags=re.M)
    (tmp_path / "params.yaml").write_text(re.sub(r"^  folds: 2", f"  folds: {folds}", text, flags=re.M))
    edit_csv(tmp_path / "reports/stats/stats_eval_test.csv", keep_base_and_lora)
    with pytest.raises(PeftqaError, match=message):
        run_report(tmp_path)
    assert not (tmp_path / "reports/report.md").exists()


def test_a_demo_slice_is_checked_against_the_items_it_scored_and_labelled(tmp_path: Path) -> None:
    """evaluate.limit_items scores test.csv's first N items: the report accepts predictions of exactly those, and
    says it is a demo slice; the full split's predictions are then stale for it."""
    write_inputs(tmp_path)
    full = pd.read_csv(tmp_path / "data/processed/test.csv", dtype={"pmid": str})
    extra = pd.DataFrame({"pmid": ["99999999"], "question": "q?", "context": "c.", "label": "yes"})
    write_csv(tmp_path / "data/processed/test.csv", pd.concat([full, extra], ignore_index=True))
    stats = pd.read_csv(tmp_path / "data/processed/split_stats.csv")
    stats.loc[stats["split"] == "val", "n"] += 5  # and val has more items than were scored
    write_csv(tmp_path / "data/processed/split_stats.csv", stats)
    with pytest.raises(PeftqaError, match="is stale"):
        run_report(tmp_path)  # one test item more than was scored, no limit: refused
    text = (tmp_path / "params.yaml").read_text(encoding="utf-8")
    (tmp_path / "params.yaml").write_text(text + f"\nevaluate:\n  limit_items: {len(full)}\n", encoding="utf-8")
    run_report(tmp_path)
    markdown = (tmp_path / "reports/report.md").read_text()
    assert f"(evaluate.limit_items: the first {len(full)} only, a demo slice, not a result)" in markdown


def test_provenance_names_each_methods_run_and_model_and_each_protocols_parent_run() -> None:
    summary = {"base": {"mlflow_run_id": "r0", "mlflow_experiment_id": "1", "mlflow_model_id": "m-0"},
               "lora": {"mlflow_run_id": "r1", "mlflow_experiment_id": "1"}}  # an older summary: no logged model
    rows = parse_tables(report_tables.provenance_table(summary, {"cv": "p9"}))["MLflow run id"]
    assert [(r["Run"], r["MLflow run id"], r["MLflow logged model id"]) for r in rows] == [
        ("base", "`r0`", "`m-0`"), ("lora", "`r1`", "—"), ("protocol cv (parent run)", "`p9`", "—")]


def test_every_reference_row_has_its_grey() -> None:
    """A reference the figures know no colour for fails the report stage after the whole run (few_shot did, once)."""
    from peftqa.params import REFERENCES
    from peftqa.report.figures import REFERENCE_COLORS

    assert set(REFERENCE_COLORS) == set(REFERENCES)
