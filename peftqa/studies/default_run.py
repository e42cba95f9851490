"""The default run (source `default`): the project root itself, the `make run` of the default params.yaml that the
committed dvc.lock records (models/, reports/eval/, reports/stats/, ...). No run is copied in: `make run` writes it
in place, and `git log -1 -- dvc.lock` names the commit that holds it.
"""
from __future__ import annotations

from pathlib import Path

from peftqa import catalog
from peftqa.report.tables import markdown_table
from peftqa.studies import run_copy as runs
from peftqa.studies.run_copy import RunCopy, read_run_copy
from peftqa.studies.shape import Study

DEFAULT_DIR = Path(".")



def default_provenance(study: RunCopy) -> str:
    """What the default tables come from: the run dvc.lock records, its model and settings, and its lock."""
    params, base = study.params, study.summary[study.baseline]
    config = catalog.RESOLVED_CONFIG.read(study.root, method=study.baseline)
    recipes = ", ".join([f"{study.baseline} C = {base['probe_c']:g}"]
                        + [f"{m} lr {params.peft[m].lr:g}" for m in study.tuned])
    size = f"{base['total_params'] / 1e6:.1f}M parameters"
    return (f"From the committed `dvc.lock` and outputs of one `make run` of the default `params.yaml` (the commit "
            f"that holds them: `git log -1 -- dvc.lock`): `{params.model.name_or_path}` ({size}, "
            f"{base['family']} family, {params.model.pooling} pooling), max_length "
            f"{params.model.max_length}, truncation {params.model.truncation}, class weighting "
            f"{params.train.class_weighting}, {params.train.epochs} epoch(s) after the validated start; recipes "
            f"{recipes}; the environment of `requirements/{config['env.lock']}.txt` (sha256 "
            f"`{config['env.lock_sha256'][:12]}…`, `env.lock_sha256` in each `{catalog.RESOLVED_CONFIG.file}`).")


def splits(study: RunCopy) -> str:
    rows = [[split, int(row.n), int(row.yes), int(row.no)] for split, row in study.split_stats.iterrows()]
    return markdown_table(["split", "items", "yes", "no"], rows)


def references(study: RunCopy) -> str:
    """Each reference row, what it chose on val, and its scores."""
    choices = catalog.REFERENCE_CHOICES.read(study.root)

    def chose(row: str) -> str:
        choice = choices[row]
        if "chosen" in choice:
            c = choice["chosen"]
            grams = "word unigrams" if c["ngram_max"] == 1 else f"word 1- to {c['ngram_max']}-grams"
            return f"{grams}, C = {c['c']:g}, class weighting {c['class_weighting']}"
        if "delta" in choice:
            return f"offset δ = {choice['delta']:+.3f}"
        counts = choice["train_counts"]
        return f"always \"{choice['label']}\" ({counts[choice['label']]} of {sum(counts.values())} train items)"

    rows = [[row, chose(row), f"{study.metrics['val'][row]['macro_f1']:.3f}",
             f"{study.metrics['test'][row]['accuracy']:.3f}", f"{study.metrics['test'][row]['macro_f1']:.3f}"]
            for row in study.references]
    return markdown_table(["reference", "chosen on val", "val macro-F1", "test accuracy", "test macro-F1"], rows)


def per_class(study: RunCopy) -> str:
    """Test F1 per class, and speed: items per second batched, and one item at a time (mean and p95)."""
    test = study.metrics["test"]
    rows = [[m, f"{test[m]['f1_no']:.3f}", f"{test[m]['f1_yes']:.3f}", f"{test[m]['examples_per_s']:.1f}",
             f"{test[m]['latency_mean_s']:.4f} / {test[m]['latency_p95_s']:.4f}"] for m in study.methods]
    rows += [[r, f"{test[r]['f1_no']:.3f}", f"{test[r]['f1_yes']:.3f}", "n/a", "n/a"] for r in study.references]
    return markdown_table(["row", "test F1 (no)", "test F1 (yes)", "items/s (batched)",
                           "one item at a time: mean / p95 (s)"], rows)


DEFAULT = Study(name="default", folder=DEFAULT_DIR, read=read_run_copy, provenance=default_provenance,
                blocks={"splits": splits, "training": runs.training, "performance": runs.performance,
                        "comparisons": runs.verdict_detail, "detectable": runs.detectable, "references": references,
                        "per-class": per_class},
                copy_in=None)
