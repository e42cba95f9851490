"""The report's protocol sections: how the numbers were obtained, and what else was run or written.

The protocol line stated above the main tables, the repeated-seeds and cross-validation sections (from the protocols
stage's tables, or how to run them when it is off), the notes under the performance table (unmapped predictions,
what the reference rows are), the protocol and provenance section, and the official submission's section.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from peftqa.catalog import REFERENCE_CHOICES
from peftqa.params import BASE_CALIBRATED, FEW_SHOT, Params
from peftqa.report.tables import markdown_table, mean_std, provenance_table, significance_table

if TYPE_CHECKING:
    from peftqa.report.inputs import ProtocolResults

REFERENCE_DESCRIPTIONS = {
    "majority": "always answers the train split's most frequent label",
    "tfidf_lr": "is TF-IDF + LogisticRegression on question + context, fitted on train, its n-grams, C and class "
                "weighting chosen on val macro-F1",
    BASE_CALIBRATED: "is the zero-shot base with one offset δ = {delta:+.3f} on its margin log p(yes) − log p(no) "
                     "(yes where margin + δ > 0), δ chosen on val macro-F1 ({val_macro_f1:.3f} there, "
                     "{val_macro_f1_at_zero:.3f} at δ = 0), never on test: the most a model gains by learning the "
                     "label prior alone, so a method that beats it learned more than the prior",
    FEW_SHOT: "is the zero-shot base with one solved train example per label, whole, before each item in its prompt "
              "(stage `few_shot`: draw {chosen} of those tried, chosen on val macro-F1; prompts up to {max_length} "
              "tokens): what in-context examples give without tuning",
}


def main_protocol_line(params: Params, n_test: int) -> str:
    """The protocol of the main tables, stated where they are."""
    return (f"Protocol: one training run per method (train seed {params.train.seed}) on the "
            f"`{params.prepare.protocol}` split (split seed {params.prepare.seed}), tested on its n = {n_test} "
            "test items"
            + (f" (evaluate.limit_items: the first {params.evaluate.limit_items} only, a demo slice, not a result)."
               if params.evaluate.limit_items else "."))


def seeds_section(results: ProtocolResults | None, params: Params) -> str:
    head = "## Repeated seeds\n\n"
    if results is None or results.seeds_test.empty:
        return head + ("Not run. Set `seeds: [1, 2, 3]` in params.yaml (stage `protocols`) to retrain every method "
                       "once per seed on the same split; this section then gives mean ± std per method.")
    runs, baseline = results.seeds_test, params.stats.baseline
    rows = []
    for row in results.seeds_summary.to_dict("records"):
        f1 = runs.loc[runs["method"] == row["method"], "macro_f1"]
        delta = "—" if row["method"] == baseline else mean_std(row["delta_macro_f1_mean"], row["delta_macro_f1_std"])
        rows.append([row["method"], int(row["n_seeds"]), mean_std(row["accuracy_mean"], row["accuracy_std"]),
                     mean_std(row["macro_f1_mean"], row["macro_f1_std"]), f"{f1.min():.3f} – {f1.max():.3f}", delta])
    header = ["Method", "Seeds", "Accuracy", "Macro-F1", "Macro-F1 range", f"Δ macro-F1 vs {baseline}"]
    return head + (
        f"Protocol: every method retrained with train seeds {', '.join(map(str, params.seeds))} on the main split "
        f"(split seed {params.prepare.seed}), each run tested on the same n = {int(runs['n'].iloc[0])} test items. "
        f"Mean ± sample std over seeds; Δ is the per-seed difference from `{baseline}` trained with the same seed. "
        "A single-run difference smaller than these stds is seed noise.\n\n" + markdown_table(header, rows))


def cv_section(results: ProtocolResults | None, params: Params) -> str:
    head = "## Cross-validation\n\n"
    if results is None or results.cv_folds.empty:
        return head + ("Not run. Set `prepare.folds: 5` in params.yaml (stages `prepare` and `protocols`) to test "
                       "every cleaned item once, with paired tests on all of them instead of the test split alone.")
    folds = results.cv_folds.assign(fold=results.cv_folds["fold"].astype(str))
    rows = []
    for method, frame in folds.groupby("method", sort=False):
        pooled = frame.loc[frame["fold"] == "pooled"].iloc[0]
        per_fold = frame.loc[frame["fold"] != "pooled", "macro_f1"]
        name = f"{method} (reference)" if method in params.references.names else method
        rows.append([name, int(pooled["n"]), f"{pooled['accuracy']:.3f}", f"{pooled['macro_f1']:.3f}",
                     mean_std(per_fold.mean(), per_fold.std(ddof=1))])
    n = int(folds.loc[folds["fold"] == "pooled", "n"].iloc[0])
    text = head + (
        f"Protocol: stratified {params.prepare.folds}-fold cross-validation over all n = {n} cleaned items (fold "
        f"seed {params.prepare.seed}). Each item is tested once, by a model (train seed {params.train.seed}) trained "
        f"on the other folds, {params.prepare.val_fraction:.0%} of them held out for early stopping. Pooled metrics "
        "are over all n predictions. The reference rows are refitted on each fold's train (their settings chosen on "
        "its val), like the methods"
        + (f"; `{BASE_CALIBRATED}` is not (it calibrates evaluate@base's val predictions, made for the main split "
           "only)" if BASE_CALIBRATED in params.references.names else "") + ".\n\n"
        + markdown_table(["Method", "n", "Pooled accuracy", "Pooled macro-F1", "Fold macro-F1 (mean ± std)"], rows))
    if not results.cv_stats.empty:
        text += ("\n\nPaired tests on the pooled predictions (same protocol, n = " + str(n) + "):\n\n"
                 + significance_table(results.cv_stats, params.stats.baseline, params.stats.confidence,
                                      list(params.references.names)))
    return text


def references_note(references: Sequence[str], choices: Mapping[str, dict]) -> str:
    """What the reference rows are, after the performance table, with what each chose (`choices`, choices.json's
    entries), then one sentence per reference that is not defined for this run; '' without either."""
    text = ""
    if references:
        text = (" Reference rows (stage `references`) are not trained methods: "
                + "; ".join(f"`{r}` {REFERENCE_DESCRIPTIONS[r].format(**choices.get(r, {}))}" for r in references)
                + f" (choices in `{REFERENCE_CHOICES.path()}`). Their latency and trainable parameters are n/a.")
    return text + "".join(f" `{name}`: {choice['not_defined']}." for name, choice in choices.items()
                          if "not_defined" in choice)


def unmapped_note(metrics: dict[str, dict]) -> str:
    counts = {m: int(v.get("unmapped", 0)) for m, v in metrics.items() if v.get("unmapped", 0)}
    if not counts:
        return "Every prediction mapped to a label."
    return ("Unmapped predictions (a generation that matches no label; counted as wrong): "
            + ", ".join(f"{m} {n}" for m, n in counts.items()) + ".")


def protocol_section(params: Params, n_test: int, summary: dict[str, dict],
                     parent_runs: dict[str, str] | None = None) -> str:
    p, s = params.prepare, params.stats
    return (f"## Protocol and provenance\n\nThese tables come from `prepare.protocol: {p.protocol}` "
            f"(split seed {p.seed}), n = {n_test} test items, labels {', '.join(p.labels)}, training seed "
            f"{params.train.seed}. Significance: exact McNemar and a paired bootstrap ({s.n_bootstrap} resamples, "
            f"seed {s.seed}, {s.confidence:.0%} percentile CI), Holm-adjusted within each test and metric. "
            "Regenerate everything with `dvc repro`. The runs are in the MLflow store (`make ui`); a protocol's seed "
            "or fold runs are the children of its parent run.\n\n" + provenance_table(summary, parent_runs))


def submission_section(left_out: dict[str, int]) -> str:
    lines = [f"- `submission/{m}.json`: {n} unmapped prediction(s) left out" for m, n in left_out.items()]
    return ("## Official submission\n\nPMID -> predicted label over the official test split. Unmapped predictions "
            "are left out rather than mapped to a label, so a file with any left out is incomplete:\n\n"
            + "\n".join(lines))
