"""Rank metrics of one class's scores, with a reason whenever one is undefined: what training's per-epoch
validation and the evaluation (:mod:`covidxray.evaluation.metrics`) both compute. A leaf module (NumPy and
scikit-learn only)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["pr_auc", "roc_auc"]


def roc_auc(y_pos: np.ndarray, scores: np.ndarray, cls: str = "positive") -> tuple[float | None, str]:
    """ROC AUC of ``scores`` for the boolean truth ``y_pos``, or ``(None, reason)``."""
    y_pos = np.asarray(y_pos, bool)
    if not y_pos.any():
        return None, f"no {cls} images"
    if y_pos.all():
        return None, f"only {cls} images (no negatives)"
    return float(roc_auc_score(y_pos, scores)), ""


def pr_auc(y_pos: np.ndarray, scores: np.ndarray, cls: str = "positive") -> tuple[float | None, str]:
    """Average precision of ``scores`` for the boolean truth ``y_pos``, or ``(None, reason)``."""
    y_pos = np.asarray(y_pos, bool)
    if not y_pos.any():
        return None, f"no {cls} images"
    return float(average_precision_score(y_pos, scores)), ""
