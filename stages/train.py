"""Stage train@<method>: fine-tune one PEFT method on train, pick the best epoch on val, save it, log it to MLflow.

Inputs:  data/processed/{train,val}.csv; params: model, train, peft.<method>, mlflow, prepare.labels.
Outputs: models/<method>/adapter/           save_pretrained output (+ head for the encoder family, peftqa.json)
         models/<method>/history.csv        one row per epoch (epoch 0 only, for a zero-shot base)
         models/<method>/train_summary.json params, sizes, best epoch, timing, MLflow run id
         models/<method>/resolved_config.json  the whole resolved config, as logged to MLflow
Usage:   python -m stages.train <method> [--debug]
         accelerate launch --multi_gpu --num_processes N -m stages.train <method>   (DDP: N processes, one result)
"""
from __future__ import annotations

from peftqa.catalog import TRAIN_SUMMARY, read_split
from peftqa.errors import PeftqaError
from peftqa.params import METHODS, load_params
from peftqa.training.distributed import end_processes
from peftqa.training.run import train_method


def main(args: list[str]) -> None:
    if len(args) != 1 or args[0] not in METHODS:
        raise PeftqaError(f"usage: python -m stages.train <method>, with <method> one of {list(METHODS)}; got {args}")
    method = args[0]
    params = load_params()
    train = read_split("train", params.train.limit_train)
    val = read_split("val", params.evaluate.limit_items)  # per-epoch val scores what evaluate scores
    train_method(params, method, train, val, TRAIN_SUMMARY.folder_path(method=method))
    end_processes()


if __name__ == "__main__":
    from peftqa.stops import run_cli

    run_cli(main)
