"""Calibration: expected calibration error (ECE) and the reliability diagram's bins.

Top-label calibration (Guo et al., ICML 2017): each image's *confidence* is its largest class probability and it
is *correct* when that class is the true one. The interval [0, 1] is cut into ``n_bins`` equal-width bins
``[0, 1/M), [1/M, 2/M), ..., [(M-1)/M, 1]`` (the last bin includes 1). With ``B_m`` the images whose confidence
falls in bin m::

    ECE = sum_m |B_m| / N * |accuracy(B_m) - mean confidence(B_m)|

0 is perfect; a model that says 0.99 and is right 80 % of the time has ECE near 0.19. Empty bins contribute
nothing. With K classes the confidence is at least 1/K, so the low bins stay empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 10


def bin_index(confidence: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """The equal-width bin of each confidence value; 1.0 goes to the last bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.clip(np.floor(np.asarray(confidence, np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def confidence_and_correct(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence (N,) and whether the top label is the true class (N,) as float."""
    probs = np.asarray(probs, np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(y)).astype(np.float64)


@dataclass
class ReliabilityBins:
    """Per-bin counts, accuracy and mean confidence (NaN for empty bins), for the reliability diagram."""

    edges: np.ndarray  # (M + 1,)
    count: np.ndarray  # (M,)
    accuracy: np.ndarray  # (M,)
    confidence: np.ndarray  # (M,)

    def to_dict(self) -> dict:
        def clean(a):
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "edges": [float(e) for e in self.edges],
            "count": [int(c) for c in self.count],
            "accuracy": clean(self.accuracy),
            "confidence": clean(self.confidence),
        }


def reliability_bins(y: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    conf, correct = confidence_and_correct(y, probs)
    b = bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(b, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), count.astype(np.int64), acc, mean_conf)


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins (see the module docstring)."""
    conf, correct = confidence_and_correct(y, probs)
    if conf.size == 0:
        raise ValueError("ECE of no images is undefined")
    b = bin_index(conf, n_bins)
    gap = np.bincount(b, weights=correct - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / conf.size)
