"""Stage embed: the frozen encoder's pooled features of every split, computed once and cached by DVC.

Inputs:  data/processed/{train,val,test}.csv; params: model, prepare.labels.
Outputs: data/features/<split>.npz   pmid (N,), label (N,), features (N, H) float32: what the encoder's head reads
         data/features/features.json  the model, family, pooling, truncation and shapes they were made with
The linear probe (train@base) is solved on these features, and every tuned method's head starts from the probe
solved on them, so an experiment that changes neither the encoder nor its inputs reuses them. For seq2seq and
causal models there is no probe (base is zero-shot): features.json says so and no .npz is written.
Usage:   python -m stages.embed
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from peftqa.catalog import FEATURES, FEATURES_META, read_split
from peftqa.data.features import BATCH_SIZE, SPLITS, embed_frame, features_key, save_features
from peftqa.errors import PeftqaError
from peftqa.families import EncoderBackbone, load_model
from peftqa.files import replace_dir_atomic
from peftqa.params import load_params

log = logging.getLogger("peftqa.embed")


def main(args: list[str]) -> None:
    if args:
        raise PeftqaError(f"stages.embed takes no arguments (it reads params.yaml), got {args}")
    params = load_params()
    # the model as it is, no method attached: this stage depends on no method's code
    backbone = load_model(params.model, None, None, params.prepare.labels, seed=params.train.seed,
                          device=params.train.device)
    meta = {**features_key(params.model), "family": backbone.family}
    if not isinstance(backbone, EncoderBackbone):
        meta["note"] = f"no features: the {backbone.family} family has no probe (base is zero-shot)"
        replace_dir_atomic(lambda folder: FEATURES_META.write(meta, into=folder), FEATURES_META.folder_path())
        log.info("embed: %s", meta["note"])
        return

    frames = {split: read_split(split) for split in SPLITS}
    start = time.perf_counter()
    features = {split: embed_frame(backbone, frame, BATCH_SIZE, desc=f"embed {split}")
                for split, frame in frames.items()}
    meta["seconds"] = round(time.perf_counter() - start, 1)
    meta["shapes"] = {split: list(value.shape) for split, value in features.items()}

    def write(folder: Path) -> None:
        for split, frame in frames.items():
            save_features(FEATURES.path(into=folder, split=split), frame, features[split])
        FEATURES_META.write(meta, into=folder)

    replace_dir_atomic(write, FEATURES.folder_path())
    log.info("embed: %s in %.0f s -> %s", meta["shapes"], meta["seconds"], FEATURES.folder_path())


if __name__ == "__main__":
    from peftqa.stops import run_cli

    run_cli(main)
