"""Label new PubMedQA-style questions with a trained adapter, scored exactly as evaluate scores.

Inputs:  JSON lines {"question": str, "context": str or [str], optional "pmid"} from --input or stdin;
         models/<method>/adapter/ (the train stage's output); params: model, prepare.labels, train.seed,
         train.device, evaluate.batch_size.
Outputs: JSON lines {"pmid"?, "label", "p_yes", "latency_s"} on stdout, one per input item, in input order.
         label is "abstain" when --abstain-below P is given and the top label's probability is below P.
Usage:   peftqa predict --method lora [--models-dir models] [--input items.jsonl] [--abstain-below 0.7]
                        [--params params.yaml] [--batch-size 32]
         python -m peftqa predict ...    (the same, without the console script on PATH)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Iterable, TextIO

import pandas as pd

from peftqa.data.items import TEXT_FIELDS, text_field_problem
from peftqa.errors import PeftqaError
from peftqa.evaluation.predictions import predict_frame
from peftqa.evaluation.scoring import use_bf16
from peftqa.methods.attach import load_backbone
from peftqa.params import METHODS, load_params

INPUT_FIELDS = TEXT_FIELDS  # required in every input line; "pmid" is optional

# -----------------------------------------------------------------------------
# pure helpers


def parse_items(lines: Iterable[str], source: str = "<stdin>") -> pd.DataFrame:
    """JSON lines -> a frame (pmid, question, context), one row per non-blank line. A context given as a list of
    paragraphs is joined with spaces, as prepare joins PubMedQA's CONTEXTS. A bad line raises a PeftqaError that
    names the line number (1-based) and the field."""
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PeftqaError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise PeftqaError(f"{where}: expected a JSON object with fields {list(INPUT_FIELDS)}, "
                              f"got {type(record).__name__}")
        for field in INPUT_FIELDS:
            if field not in record:
                raise PeftqaError(f"{where}: field '{field}' is missing; every line needs {list(INPUT_FIELDS)}")
        context = record["context"]
        if isinstance(context, list) and all(isinstance(paragraph, str) for paragraph in context):
            context = " ".join(context)
        for field, value in (("question", record["question"]), ("context", context)):
            problem = text_field_problem(field, value)
            if problem:
                raise PeftqaError(f"{where}: {problem}")
        pmid = record.get("pmid")
        if pmid is not None and (isinstance(pmid, bool) or not isinstance(pmid, (str, int))):
            raise PeftqaError(f"{where}: field 'pmid' must be a string or an integer, got {pmid!r:.60}")
        rows.append({"pmid": None if pmid is None else str(pmid), "question": record["question"], "context": context})
    return pd.DataFrame(rows, columns=["pmid", "question", "context"])


def output_records(predictions: pd.DataFrame) -> list[dict[str, object]]:
    """Rows of (pmid, pred, p_yes, latency_s) -> output dicts; no pmid key where the input had none (None, or NaN
    once pandas has mixed it with strings), NaN -> null."""
    records = []
    for row in predictions.itertuples(index=False):
        record: dict[str, object] = {} if pd.isna(row.pmid) else {"pmid": row.pmid}
        p_yes = float(row.p_yes)
        record.update(label=row.pred, p_yes=None if math.isnan(p_yes) else p_yes, latency_s=float(row.latency_s))
        records.append(record)
    return records


# -----------------------------------------------------------------------------
# the command: evaluate's own scoring (peftqa.evaluation.predictions.predict_frame), so predict and evaluate cannot
# drift apart


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="peftqa predict", description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=METHODS, help="which trained method (models/<method>/)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="the train stage's output folder")
    parser.add_argument("--input", default="-", help="a JSON-lines file; - (the default) reads stdin")
    parser.add_argument("--abstain-below", type=float, default=None, metavar="P",
                        help="write label 'abstain' when the top label's probability is below P (0 < P <= 1)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the params the adapter was trained with")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="items scored together (default: evaluate.batch_size)")
    args = parser.parse_args(argv)
    if args.abstain_below is not None and not 0 < args.abstain_below <= 1:
        raise PeftqaError(f"--abstain-below {args.abstain_below} is invalid: a probability in (0, 1] is needed")
    if args.batch_size is not None and args.batch_size < 1:
        raise PeftqaError(f"--batch-size {args.batch_size} is invalid: must be >= 1")
    return args


def write_json_lines(records: list[dict[str, object]], stream: TextIO) -> None:
    for record in records:
        stream.write(json.dumps(record, allow_nan=False) + "\n")  # strict JSON: a NaN would raise, not be written
    stream.flush()


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    adapter_dir = args.models_dir / args.method / "adapter"
    if not adapter_dir.is_dir():
        raise PeftqaError(f"{adapter_dir} not found: train the method first (`dvc repro train@{args.method}`) "
                          "or point --models-dir at the folder that holds <method>/adapter")
    if args.input == "-":
        items = parse_items(sys.stdin, "<stdin>")
    else:
        try:
            with open(args.input, encoding="utf-8") as f:
                items = parse_items(f, args.input)
        except OSError as err:
            raise PeftqaError(f"--input {args.input}: cannot read it ({err.strerror})") from None

    backbone = load_backbone(params.model, args.method, params.peft, params.prepare.labels, seed=params.train.seed,
                             device=params.train.device, adapter_dir=adapter_dir)
    predictions = predict_frame(backbone, items, args.batch_size or params.evaluate.batch_size, params.model.scoring,
                                use_bf16(params.model.dtype, backbone.device), args.abstain_below,
                                by_length=params.train.length_groups)
    write_json_lines(output_records(predictions), sys.stdout)

