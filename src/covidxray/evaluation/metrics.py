"""Point estimates of the classification metrics, with a reason whenever one is undefined.

Inputs are the true class indices ``y`` (N,) and the class probabilities ``probs`` (N, K). The predicted class is
the arg-max. Every per-class metric is one-vs-rest:

- sensitivity (recall) = TP / (TP + FN), specificity = TN / (TN + FP),
- PPV (precision) = TP / (TP + FP), NPV = TN / (TN + FN), F1 = 2 TP / (2 TP + FP + FN),
- ROC AUC (:func:`sklearn.metrics.roc_auc_score`) and PR AUC as average precision
  (:func:`sklearn.metrics.average_precision_score`) of the class probability;
- the macro ROC/PR AUC is the mean over the classes whose AUC is defined (the note names any left out).

A metric that cannot be computed (a class absent from the data, nothing predicted as a class) is ``None`` in
:attr:`PointMetrics.values` and its reason is in :attr:`PointMetrics.reasons` -- never a crash, never a made-up 0.
Keys are flat (``"sensitivity[covid]"``, ``"roc_auc[macro]"``) so the bootstrap (:mod:`.bootstrap`) returns the
same keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import confusion_matrix

from covidxray.evaluation.calibration import expected_calibration_error
from covidxray.metrics import pr_auc, roc_auc

CLASS_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc")
MACRO_METRICS = ("roc_auc", "pr_auc")
LOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1] before the log in the cross-entropy


def key(metric: str, cls: str) -> str:
    """The flat key of a per-class or macro metric, e.g. ``key("f1", "covid") == "f1[covid]"``."""
    return f"{metric}[{cls}]"


@dataclass
class PointMetrics:
    """Metric values (``None`` when undefined) and, for those, why."""

    values: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: float | None, reason: str = "") -> None:
        self.values[name] = None if value is None else float(value)
        if value is None:
            self.reasons[name] = reason


def encode_labels(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class names -> indices into ``classes``; raises ValueError naming labels the model does not know."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(label) for label in labels} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's classes {list(classes)}")
    return np.asarray([index[str(label)] for label in labels], dtype=np.int64)


def check_inputs(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or y.shape != (probs.shape[0],):
        raise ValueError(f"expected y (N,) and probs (N, K), got {y.shape} and {probs.shape}")
    if y.size and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError(f"class indices must be in [0, {probs.shape[1]}), got [{y.min()}, {y.max()}]")
    return y, probs


def counts(y_pos: np.ndarray, pred_pos: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, TN, FN) of boolean truth and prediction vectors."""
    y_pos, pred_pos = np.asarray(y_pos, bool), np.asarray(pred_pos, bool)
    tp = int(np.sum(y_pos & pred_pos))
    fp = int(np.sum(~y_pos & pred_pos))
    tn = int(np.sum(~y_pos & ~pred_pos))
    fn = int(np.sum(y_pos & ~pred_pos))
    return tp, fp, tn, fn


def binary_rates(y_pos: np.ndarray, pred_pos: np.ndarray, cls: str = "positive") -> PointMetrics:
    """Sensitivity, specificity, PPV, NPV and F1 of one class (keys without the class suffix)."""
    tp, fp, tn, fn = counts(y_pos, pred_pos)
    m = PointMetrics()
    m.set("sensitivity", tp / (tp + fn) if tp + fn else None, f"no {cls} images")
    m.set("specificity", tn / (tn + fp) if tn + fp else None, f"every image is {cls}")
    m.set("ppv", tp / (tp + fp) if tp + fp else None, f"no image predicted {cls}")
    m.set("npv", tn / (tn + fn) if tn + fn else None, f"every image predicted {cls}")
    m.set("f1", 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None, f"no {cls} images and none predicted")
    return m


def cross_entropy(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class (natural log)."""
    y, probs = check_inputs(y, probs)
    p_true = np.clip(probs[np.arange(len(y)), y], LOSS_EPS, 1.0)
    return float(-np.mean(np.log(p_true)))


def point_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], n_bins: int = 10) -> PointMetrics:
    """All metrics of one set of predictions: accuracy, loss, ECE, per-class rates and AUCs, macro AUCs."""
    y, probs = check_inputs(y, probs)
    if len(classes) != probs.shape[1]:
        raise ValueError(f"{len(classes)} class names for {probs.shape[1]} probability columns")
    out = PointMetrics()
    if len(y) == 0:
        for name in ("accuracy", "loss", "ece"):
            out.set(name, None, "no images")
        return out
    pred = probs.argmax(axis=1)
    out.set("accuracy", float(np.mean(pred == y)))
    out.set("loss", cross_entropy(y, probs))
    out.set("ece", expected_calibration_error(y, probs, n_bins))
    for k, cls in enumerate(classes):
        rates = binary_rates(y == k, pred == k, cls)
        for name, value in rates.values.items():
            out.set(key(name, cls), value, rates.reasons.get(name, ""))
        for name, fn in (("roc_auc", roc_auc), ("pr_auc", pr_auc)):
            value, reason = fn(y == k, probs[:, k], cls)
            out.set(key(name, cls), value, reason)
    for name in MACRO_METRICS:
        defined = [c for c in classes if out.values[key(name, c)] is not None]
        missing = [c for c in classes if c not in defined]
        if not defined:
            out.set(key(name, "macro"), None, f"undefined for every class ({', '.join(missing)})")
            continue
        out.set(key(name, "macro"), float(np.mean([out.values[key(name, c)] for c in defined])))
        if missing:
            out.notes[key(name, "macro")] = (
                f"mean over {', '.join(defined)} only ({', '.join(missing)} undefined)"
            )
    return out


def confusion(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Confusion matrix (K, K): rows are true classes, columns arg-max predictions."""
    y, probs = check_inputs(y, probs)
    return confusion_matrix(y, probs.argmax(axis=1), labels=np.arange(probs.shape[1]))
