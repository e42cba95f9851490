"""report.md assembled from its parts (tables, findings, sections), and the submission file of test labels."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from peftqa.params import Params
from peftqa.report.abstention import abstention_section
from peftqa.report.figures import FIGURE_CAPTIONS, SEEDS_FIGURE, confusion_figure_name
from peftqa.report.findings import (
    collapse_sentence,
    describe_against_prior,
    describe_against_references,
    describe_baseline,
    describe_method,
    detectable_difference_sentence,
)
from peftqa.report.inputs import ReportInputs
from peftqa.report.sections import (
    cv_section,
    main_protocol_line,
    protocol_section,
    references_note,
    seeds_section,
    submission_section,
    unmapped_note,
)
from peftqa.report.tables import (
    Column,
    performance_rows,
    performance_table,
    significance_table,
    split_table,
    training_table,
)


def build_submission(preds: pd.DataFrame) -> tuple[dict[str, str], int]:
    """PMID -> predicted label (official format); unmapped predictions are left out, never guessed, and counted."""
    mapped = preds.dropna(subset=["pred"])
    return dict(zip(mapped["pmid"], mapped["pred"])), len(preds) - len(mapped)


def build_report(inputs: ReportInputs, params: Params, columns: Sequence[Column],
                 left_out: dict[str, int] | None) -> str:
    baseline, confidence = params.stats.baseline, params.stats.confidence
    first = next(iter(inputs.summary.values()))
    tuned = [m for m in params.methods if m != baseline]
    references = inputs.references
    findings = [describe_baseline(baseline, inputs.metrics[baseline], inputs.preds[baseline])
                + describe_against_references(baseline, references, inputs.stats, confidence)
                + describe_against_prior(baseline, references, inputs.stats, confidence)]
    findings += [describe_method(m, baseline, inputs.metrics, inputs.stats, confidence)
                 + describe_against_references(m, references, inputs.stats, confidence)
                 + describe_against_prior(m, references, inputs.stats, confidence)
                 + collapse_sentence(m, inputs.preds[m]) for m in tuned]
    captions = {**FIGURE_CAPTIONS, **{confusion_figure_name(m): f"Test confusion matrix: {m}" for m in params.methods}}
    if inputs.protocols is not None and not inputs.protocols.seeds_test.empty:
        captions[SEEDS_FIGURE] = "Test macro-F1 of each repeated-seed run, with mean ± std per method"
    main_protocol = main_protocol_line(params, inputs.n_test)
    sections = [
        f"# PEFT on PubMedQA: {first['model']}",
        f"Model `{first['model']}` ({first['family']} family), protocol `{params.prepare.protocol}`, "
        f"n = {inputs.n_test} test items; methods {', '.join(params.methods)} against the baseline `{baseline}`.",
        "## Data splits\n\n" + split_table(inputs.split_stats),
        "## Test performance\n\n" + main_protocol + "\n\n"
        + performance_table(performance_rows(inputs.metrics, inputs.reference_metrics, columns), columns) + "\n\n"
        + unmapped_note(inputs.metrics) + references_note(references, inputs.reference_choices),
        "## Significance\n\n" + main_protocol + " Each tuned method against the baseline, then tuned methods "
        "pairwise, then every method against each reference row. b = items the "
        "reference got wrong and the method right (fixes), c = the reverse (regressions).\n\n"
        + significance_table(inputs.stats, baseline, confidence, references) + "\n\n"
        + detectable_difference_sentence(inputs.stats, params.methods, baseline, references, inputs.n_test),
        "## Findings\n\n" + "\n\n".join(findings),
        seeds_section(inputs.protocols, params),
        cv_section(inputs.protocols, params),
        abstention_section(inputs.preds_val, inputs.preds, inputs.split_stats, params.prepare.labels),
        "## Training\n\n" + training_table(inputs.summary),
        "## Figures\n\n" + "\n\n".join(f"![{c}](figures/{name})" for name, c in captions.items()),
        protocol_section(params, inputs.n_test, inputs.summary,
                         inputs.protocols.parent_runs if inputs.protocols else None),
    ]
    if left_out is not None:
        sections.append(submission_section(left_out))
    return "\n\n".join(sections) + "\n"
