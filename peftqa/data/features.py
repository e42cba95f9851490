"""The frozen encoder's pooled features: embedded once by stage embed into data/features/<split>.npz, then read by
PMID wherever the probe is solved (train@base, and the start of every tuned encoder head).
"""
from __future__ import annotations

import json
import logging
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from peftqa.catalog import FEATURES, FEATURES_META, SPLITS
from peftqa.errors import PeftqaError, reading
from peftqa.evaluation.scoring import iterate_batches
from peftqa.families import EncoderBackbone
from peftqa.files import atomic_path
from peftqa.params import ModelParams

log = logging.getLogger(__name__)


FEATURES_DIR = FEATURES.folder_path()  # data/features, stage embed's
BATCH_SIZE = 32  # items per forward pass; features do not depend on it beyond float rounding


@torch.no_grad()
def embed_frame(backbone: EncoderBackbone, frame: pd.DataFrame, batch_size: int, desc: str = "embed") -> np.ndarray:
    """(N, H) float32 pooled features of the frame's items, in file order; the encoder in eval mode (no dropout)."""
    backbone.model.eval()
    chunks = []
    bar = tqdm(iterate_batches(frame, batch_size), total=-(-len(frame) // batch_size), desc=desc, unit="batch",
               file=sys.stderr, dynamic_ncols=True)
    for questions, contexts, _ in bar:
        chunks.append(backbone.features(backbone.encode(questions, contexts)).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, backbone.model.config.hidden_size), np.float32)


def save_features(path: Path, frame: pd.DataFrame, features: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # np.savez would append .npz to a temporary name
            np.savez(handle, pmid=frame["pmid"].to_numpy(dtype=str), label=frame["label"].to_numpy(dtype=str),
                     features=features.astype(np.float32))


def load_features(split: str, folder: Path = FEATURES_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pmid (N,), label (N,), features (N, H)) of one split, as stage embed wrote them."""
    path = FEATURES.path(into=folder, split=split)
    if not path.is_file():
        raise PeftqaError(f"{path} not found; run `dvc repro embed` first (the probe is fitted on these features)")
    with reading(path, f"restore it with `dvc checkout {folder}` (or rebuild it: `dvc repro -f embed`)"):
        with open(path, "rb") as handle:  # without a zip's signature np.load takes it for a pickle, and says that
            if handle.read(4) != b"PK\x03\x04":
                raise zipfile.BadZipFile("File is not a zip file")
        with np.load(path, allow_pickle=False) as data:
            return data["pmid"], data["label"], data["features"]


def features_key(model_params: ModelParams) -> dict[str, object]:
    """What the features depend on beyond the items: recorded in features.json, checked before the cache is used."""
    return {"model": model_params.name_or_path, "pooling": model_params.pooling,
            "truncation": model_params.truncation, "max_length": model_params.max_length}


def features_for(backbone: EncoderBackbone, frame: pd.DataFrame, model_params: ModelParams,
                 folder: Path = FEATURES_DIR) -> np.ndarray:
    """(N, H) frozen-encoder features of the frame's items, by PMID from stage embed's cache when it was made with
    these model params; otherwise (another split, a test's tiny model) embedded now, any adapter switched off."""
    meta_path = FEATURES_META.path(into=folder)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if all(meta.get(key) == value for key, value in features_key(model_params).items()) and "shapes" in meta:
            table = {}
            for split in SPLITS:
                pmids, _, features = load_features(split, folder)
                table.update(zip(pmids.tolist(), features))
            if all(pmid in table for pmid in frame["pmid"]):
                return np.stack([table[pmid] for pmid in frame["pmid"]]) if len(frame) else np.zeros((0, 0))
    log.info("features of %d items are not in %s for these model params: embedding them now", len(frame), folder)
    with backbone.frozen_encoder():
        return embed_frame(backbone, frame, BATCH_SIZE)
