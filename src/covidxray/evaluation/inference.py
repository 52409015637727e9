"""Run a saved model over manifest rows: class probabilities and penultimate features, in batches.

Images come from the data cache (:func:`covidxray.data.cache.load_cache`), preprocessed exactly as the bundle's
``preprocessing`` says -- the same uint8 images training saw, so evaluation never re-implements preprocessing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidxray.preprocess import Preprocessing, mean_over_views

if TYPE_CHECKING:
    import pandas as pd

    from covidxray.bundle import Bundle
    from covidxray.models.base import XRayNet

DEFAULT_BATCH_SIZE = 32


@dataclass
class InferenceResult:
    probabilities: np.ndarray  # (N, K) float64, rows sum to 1
    features: np.ndarray  # (N, F) float32, the classifier's penultimate vector
    classes: list[str]

    def probability(self, cls: str) -> np.ndarray:
        """The probabilities of class ``cls`` (N,), e.g. ``"covid"``."""
        if cls not in self.classes:
            raise KeyError(f"class {cls!r} is not one of this model's classes {self.classes}")
        return self.probabilities[:, self.classes.index(cls)]


def predict_canonical(
    model: XRayNet,
    images: np.ndarray,
    preprocessing: Preprocessing,
    classes: list[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    rows: np.ndarray | None = None,
    views: int = 1,
) -> InferenceResult:
    """Probabilities and features of canonical uint8 images (N, S, S) (the cache's format).

    ``rows`` (positions into ``images``) selects and orders the images; a memory map is read batch by batch.
    ``views > 1``: test-time augmentation, the mean probability over the first ``views`` views of
    :meth:`Preprocessing.view_inputs` (the predictor's TTA); the features stay the identity view's.
    """
    import torch

    rows = np.arange(len(images)) if rows is None else np.asarray(rows, np.int64)
    model.eval()
    probs, feats = [], []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            canonical = np.asarray(images[rows[start : start + batch_size]])
            x = torch.from_numpy(preprocessing.view_inputs(canonical, views))
            p, f = model.probabilities_and_features(x)
            probs.append(mean_over_views(p.double().numpy(), views))
            feats.append(f.flatten(1).float().numpy()[::views])
    k = len(classes)
    if not probs:
        return InferenceResult(np.zeros((0, k)), np.zeros((0, 0), np.float32), list(classes))
    return InferenceResult(np.concatenate(probs), np.concatenate(feats), list(classes))


def manifest_images(
    manifest_df: pd.DataFrame, preprocessing: Preprocessing, cache_dir: str | Path
) -> np.ndarray:
    """The cached canonical images of *every* manifest row (one cache shared by training, guard and evaluation)."""
    from covidxray.data.cache import load_cache

    return load_cache(manifest_df, preprocessing, cache_dir)


def run_inference(
    bundle: Bundle,
    manifest_df: pd.DataFrame,
    cache_dir: str | Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rows: np.ndarray | None = None,
    views: int = 1,
) -> InferenceResult:
    """Probabilities and features for the manifest rows at positions ``rows`` (default: all, in order);
    ``views > 1`` averages over that many test-time views (:func:`predict_canonical`)."""
    p = bundle.config.preprocessing
    images = manifest_images(manifest_df, p, cache_dir)
    return predict_canonical(bundle.model, images, p, bundle.config.classes, batch_size, rows, views)


def images_per_second(
    model: XRayNet, preprocessing: Preprocessing, batch_size: int = 16, repeats: int = 3, seed: int = 0
) -> float:
    """Inference throughput on a fixed random batch (after one warm-up pass), CPU/torch as configured."""
    import torch

    rng = np.random.default_rng(seed)
    s = preprocessing.image_size
    x = torch.from_numpy(preprocessing.to_input(rng.integers(0, 256, (batch_size, s, s), dtype=np.uint8)))
    model.eval()
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        elapsed = time.perf_counter() - start
    return batch_size * repeats / elapsed
