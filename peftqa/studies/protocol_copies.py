"""The protocol copies (sources `cv5` and `seeds3`): the protocols stage's tables, copied flat out of two DVC
experiments of the default run into reports/cv5/ (`prepare.folds: 5`) and reports/seeds3/ (three seeds), with the
experiment's params.yaml, DVC metrics and report; run.json records the experiment, by hand. Their tables are the
report's cross-validation and seeds sections, drawn by the same code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from peftqa import catalog
from peftqa.catalog import Output
from peftqa.files import read_json
from peftqa.params import Params, YamlLoader, parse_params
from peftqa.report.figures import SEEDS_FIGURE
from peftqa.report.inputs import ProtocolResults
from peftqa.report.sections import cv_section, seeds_section
from peftqa.report.tables import markdown_table
from peftqa.studies.run_copy import RUN_JSON, duration, effect_ci, read_file
from peftqa.studies.shape import STUDY_RECORDS, Study, copy_run

CV5_DIR, SEEDS3_DIR = Path("reports/cv5"), Path("reports/seeds3")
PROTOCOL_TABLES = (catalog.SEEDS_TEST, catalog.SEEDS_SUMMARY, catalog.CV_FOLDS, catalog.CV_PREDS, catalog.CV_STATS)


@dataclass(frozen=True)
class ProtocolCopy:
    root: Path
    run: dict  # run.json: the experiment, its commit and command, when and where it ran
    params: Params
    results: ProtocolResults


def read_protocol_copy(root: Path) -> ProtocolCopy:
    """A copy's params.yaml (without its `peft` section, written in a format older than today's parser; the protocol
    tables need none of it), run.json and whichever protocol tables it holds (the others empty)."""
    def params_of(path: Path) -> Params:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=YamlLoader)
        data.pop("peft", None)
        return parse_params(data, str(path))

    def table(output: Output) -> pd.DataFrame:  # the protocols stage's tables, copied flat into `root`
        return pd.read_csv(output.path(into=root)) if output.exists(into=root) else pd.DataFrame()

    return ProtocolCopy(root=root, run=read_file(root, RUN_JSON, read_json),
                        params=read_file(root, "params.yaml", params_of),
                        results=ProtocolResults(*map(table, (catalog.SEEDS_TEST, catalog.SEEDS_SUMMARY,
                                                             catalog.CV_FOLDS, catalog.CV_STATS))))


def protocol_provenance(copy: ProtocolCopy) -> str:
    run = copy.run
    return (f"From the DVC experiment `{run['experiment']}` (commit `{run['commit']}`, queued from the default run's "
            f"commit `{run['baseline_commit']}`), run on {run['started'][:10]} ({run['started'][11:16]} to "
            f"{run['finished'][11:16]}, {duration(run['wall_s'])} wall, {run['trainings']} trainings) on "
            f"{run['machine']}; the tables are copied in [`reports/{copy.root.name}/`]"
            f"(../reports/{copy.root.name}/README.md). Command:"
            f"\n\n```bash\n{run['command']}\n```")


def without_heading(section: str) -> str:
    return section.split("\n\n", 1)[1]


def cv_pooled(copy: ProtocolCopy) -> str:
    """The report's cross-validation section without its heading and its all-pairs tests (cv_comparisons)."""
    results = ProtocolResults(**{**copy.results.__dict__, "cv_stats": pd.DataFrame()})
    return without_heading(cv_section(results, copy.params))


def cv_comparisons(copy: ProtocolCopy) -> str:
    """The pooled paired tests that answer the question: each tuned method against the baseline, and every method
    against each reference row (the stats stage's effect = method − other)."""
    stats, baseline = copy.results.cv_stats, copy.params.stats.baseline
    confidence = f"{copy.params.stats.confidence:.0%}"
    wanted = stats[(stats["reference"] == baseline) | stats["reference"].isin(copy.params.references.names)]
    rows = []
    for (method, other), pair in wanted.groupby(["method", "reference"], sort=False):
        mcnemar = pair[pair["test"] == "mcnemar_exact"].iloc[0]
        boot = {row.metric: row for row in pair[pair["test"] == "paired_bootstrap"].itertuples()}
        rows.append([method, other, effect_ci(boot["accuracy"]), f"{int(mcnemar.b)} / {int(mcnemar.c)}",
                     f"{mcnemar.p_holm:.3f}", effect_ci(boot["macro_f1"])])
    return markdown_table(["method", "against", f"Δ accuracy [{confidence} CI]", "McNemar b / c",
                           "McNemar p (Holm)", f"Δ macro-F1 [{confidence} CI]"], rows)


def copy_protocol_tables(source_root: Path, folder: Path) -> None:
    """A finished protocols experiment into `folder`, flat: whichever protocol tables (and the seeds figure) it wrote,
    its DVC metrics, report and params.yaml; the folder's README and run.json stay."""
    outputs = [output.path() for output in PROTOCOL_TABLES if output.exists(source_root)]
    if (source_root / catalog.FIGURE.path(figure=SEEDS_FIGURE)).exists():
        outputs.append(catalog.FIGURE.path(figure=SEEDS_FIGURE))
    outputs += [catalog.PROTOCOLS_METRICS.path(), catalog.REPORT.path(), Path("params.yaml")]
    copy_run({path.name: source_root / path for path in outputs}, folder, keep=STUDY_RECORDS)


PROTOCOL_BLOCKS = {"cv": cv_pooled, "cv-comparisons": cv_comparisons,
                   "seeds": lambda copy: without_heading(seeds_section(copy.results, copy.params))}
CV5 = Study(name="cv5", folder=CV5_DIR, read=read_protocol_copy, blocks=PROTOCOL_BLOCKS,
            provenance=protocol_provenance, copy_in=copy_protocol_tables)
SEEDS3 = Study(name="seeds3", folder=SEEDS3_DIR, read=read_protocol_copy, blocks=PROTOCOL_BLOCKS,
               provenance=protocol_provenance, copy_in=copy_protocol_tables)
