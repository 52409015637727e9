"""The rows a run trains and validates on, and their images from the preprocessed cache.

Images are read from :func:`covidxray.data.cache.load_cache` (a uint8 memory map built once per manifest and
preprocessing), never decoded per epoch. The cache is built for the whole manifest, the same file evaluation
and prediction reopen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidxray.data.tasks import task_labels
from covidxray.preprocess import Preprocessing
from covidxray.training.config import TrainConfig


class DataError(ValueError):
    """The manifest cannot give this run what it needs (missing file, empty split, ...)."""


@dataclass
class SplitData:
    """One split of the task: positions into the cached image array, class indices, sources."""

    name: str
    positions: np.ndarray  # row positions in the full manifest (= in the cache array)
    targets: np.ndarray  # class index per row
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)


def read_training_manifest(path: str | Path) -> pd.DataFrame:
    """The manifest, or :class:`DataError` saying what is missing."""
    p = Path(path)
    if not str(path) or not p.is_file():
        raise DataError(
            f"manifest {str(path)!r} not found; build one with 'covidxray data manifest --root DATA'"
        )
    from covidxray.data.manifest import read_manifest

    return read_manifest(p)


def select_split(df: pd.DataFrame, cfg: TrainConfig, split: str) -> SplitData:
    """Rows of ``split`` that belong to the task (``cfg.classes``), minus ``cfg.holdout_source`` and every
    copy of its images in the other sources (:func:`holdout_copies`)."""
    missing = {"label", "split", "source", "sha1", "path"} - set(df.columns)
    if missing:
        raise DataError(f"manifest lacks column(s) {sorted(missing)}")
    keep = (df["split"].astype(str) == split).to_numpy()
    if cfg.holdout_source:
        keep = keep & (df["source"].astype(str) != cfg.holdout_source).to_numpy()
        keep = keep & ~holdout_copies(df, cfg.holdout_source)
    return _task_rows(df, cfg, keep, split)


def holdout_copies(df: pd.DataFrame, source: str) -> np.ndarray:
    """Rows of *other* sources that are copies of an image of ``source``: same duplicate group
    (``dup_group``: exact or near copies, :mod:`covidxray.data.dedup`).

    The public collections copy each other (covid-chestxray-dataset images inside the Radiography Database's
    COVID folder, Kermany's children among its normals): a model trained on one copy and scored on the other
    is not scored out of source. A manifest without ``dup_group`` (built by hand) has no copies to find.
    """
    from covidxray.data.dedup import group_ids

    sources = df["source"].astype(str).to_numpy()
    groups, known = group_ids(df)
    held = set(groups[(sources == source) & known].tolist())
    return (sources != source) & np.isin(groups, list(held))


def holdout_rows(df: pd.DataFrame, cfg: TrainConfig) -> SplitData | None:
    """Every row of ``cfg.holdout_source`` that belongs to the task, whatever its split (None without one)."""
    if not cfg.holdout_source:
        return None
    return _task_rows(df, cfg, (df["source"].astype(str) == cfg.holdout_source).to_numpy(), "holdout")


def _task_rows(df: pd.DataFrame, cfg: TrainConfig, keep: np.ndarray, name: str) -> SplitData:
    """The rows of ``keep`` whose label belongs to the task, with their class indices and sources."""
    labels = task_labels(df["label"], cfg.classes)
    index = {c: i for i, c in enumerate(cfg.classes)}
    positions = np.flatnonzero(keep & labels.notna().to_numpy())
    return SplitData(
        name=name,
        positions=positions,
        targets=np.asarray([index[c] for c in labels.to_numpy()[positions]], dtype=np.int64),
        sources=df["source"].astype(str).to_numpy()[positions],
    )


def check_splits(df: pd.DataFrame, cfg: TrainConfig, train: SplitData, val: SplitData) -> None:
    """Refuse a run that cannot train: no training rows, or a class with no training rows."""
    where = f" (holdout source {cfg.holdout_source!r} excluded)" if cfg.holdout_source else ""
    if cfg.holdout_source and cfg.holdout_source not in set(df["source"].astype(str)):
        raise DataError(
            f"holdout source {cfg.holdout_source!r} is not in the manifest; sources: "
            f"{sorted(set(df['source'].astype(str)))}"
        )
    if not len(train):
        raise DataError(f"the train split has no rows of classes {list(cfg.classes)}{where}")
    present = np.bincount(train.targets, minlength=len(cfg.classes))
    empty = [c for c, k in zip(cfg.classes, present, strict=True) if k == 0]
    if empty:
        raise DataError(f"the train split has no rows of class(es) {empty}{where}")
    if not len(val):
        raise DataError(f"the val split has no rows of classes {list(cfg.classes)}{where}")


def split_counts(df: pd.DataFrame, splits: list[SplitData]) -> dict[str, dict[str, dict[str, int]]]:
    """Rows used, as {split: {source: {label: n}}} with the manifest's own labels."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for s in splits:
        rows = df.iloc[s.positions]
        table = rows.groupby(["source", "label"]).size()
        counts: dict[str, dict[str, int]] = {}
        for (src, lab), n in table.items():
            counts.setdefault(str(src), {})[str(lab)] = int(n)
        out[s.name] = counts
    return out


def load_images(df: pd.DataFrame, pre: Preprocessing, cfg: TrainConfig, progress: bool) -> np.ndarray:
    """The manifest's cached canonical images (N, S, S) uint8, built on first use."""
    from covidxray.data.cache import load_cache

    return load_cache(df, pre, cache_dir=cfg.cache_dir, workers=max(1, cfg.workers), progress=progress)


def batch_inputs(images: np.ndarray, positions: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """Model inputs (B, C, S, S) in [0, 1] for cache rows ``positions`` (in that order)."""
    return torch.from_numpy(pre.to_input(np.asarray(images[positions])))
