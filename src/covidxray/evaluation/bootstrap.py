"""Confidence intervals from a bootstrap over patients, vectorised over resamples.

Images of one patient are not independent (the same lungs, often the same scanner day), so resampling images
would give intervals that are too narrow. Each resample draws the evaluated *patients* with replacement
(seeded); a patient drawn c times contributes all of its images with weight c. A resample is therefore a
weight vector over the images, and every metric below is computed for a whole block of resamples at once as
matrix products over a (resamples, images) weight matrix -- 1,000 resamples of a few thousand images take
about a second instead of the minutes a loop over :mod:`sklearn.metrics` would.

The weighted metrics equal :func:`sklearn.metrics.roc_auc_score` / :func:`~sklearn.metrics.average_precision_score`
with ``sample_weight`` (the tests check this) and the definitions of :mod:`.metrics` and :mod:`.calibration`.
The interval is the percentile interval (2.5th and 97.5th percentiles for 95 %) over the resamples in which the
metric is defined; when fewer than 90 % of them define it there is no interval: a patient is missing from about
37 % of resamples, so this happens when a class has only one or two patients, where no bootstrap interval means
much.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from covidxray.evaluation.calibration import DEFAULT_BINS, bin_index, confidence_and_correct
from covidxray.evaluation.metrics import LOSS_EPS, key

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
MIN_DEFINED_FRACTION = 0.9
CHUNK_ELEMENTS = 4_000_000  # resamples x images per block: bounds memory to a few tens of MB

Statistic = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None
    n_defined: int  # resamples in which the metric was defined
    reason: str = ""

    def to_list(self) -> list[float] | None:
        return None if self.low is None else [self.low, self.high]


def resample_patients(
    patient_ids: Sequence, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Patient draw counts (n_resamples, P) and each image's patient index (N,).

    ``counts[b, p]`` is how often patient p was drawn in resample b; every row sums to P.
    """
    _, row_patient = np.unique(np.asarray(patient_ids, dtype=str), return_inverse=True)
    n_patients = int(row_patient.max()) + 1 if row_patient.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, max(n_patients, 1), size=(n_resamples, n_patients))
    flat = (draws + np.arange(n_resamples)[:, None] * n_patients).ravel()
    counts = np.bincount(flat, minlength=n_resamples * n_patients).reshape(n_resamples, n_patients)
    return counts.astype(np.int32), row_patient


def patient_bootstrap(
    statistic: Statistic,
    patient_ids: Sequence,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Interval]:
    """Percentile intervals of ``statistic(weights) -> {name: (B,) values}`` over patient resamples."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    counts, row_patient = resample_patients(patient_ids, n_resamples, seed)
    chunk = max(1, CHUNK_ELEMENTS // max(len(row_patient), 1))
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    for start in range(0, n_resamples, chunk):
        weights = counts[start : start + chunk][:, row_patient].astype(np.float64)
        for name, v in statistic(weights).items():
            values[name].append(np.asarray(v, np.float64))
    alpha = (1 - level) / 2
    out = {}
    for name, parts in values.items():
        v = np.concatenate(parts)
        defined = v[~np.isnan(v)]
        if defined.size < MIN_DEFINED_FRACTION * n_resamples:
            reason = f"defined in only {defined.size} of {n_resamples} patient resamples"
            out[name] = Interval(None, None, int(defined.size), reason)
            continue
        lo, hi = np.percentile(defined, [100 * alpha, 100 * (1 - alpha)])
        out[name] = Interval(float(lo), float(hi), int(defined.size))
    return out


# -- weighted metrics: weights (B, N) -> values (B,) -----------------------------------------------------------
def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_rates(weights: np.ndarray, y_pos: np.ndarray, pred_pos: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV, F1 per resample (NaN where undefined)."""
    y_pos, pred_pos = np.asarray(y_pos, bool), np.asarray(pred_pos, bool)
    tp = weights @ (y_pos & pred_pos)
    fp = weights @ (~y_pos & pred_pos)
    tn = weights @ (~y_pos & ~pred_pos)
    fn = weights @ (y_pos & ~pred_pos)
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _tie_groups(weights, y_pos, scores, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per group of equal scores, groups sorted by score: (B, G) each."""
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores if descending else scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order]
    y = np.asarray(y_pos, bool)[order]
    return np.add.reduceat(w * y, starts, axis=1), np.add.reduceat(w * ~y, starts, axis=1)


def weighted_roc_auc(weights: np.ndarray, y_pos: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC per resample: P(score_pos > score_neg) + 0.5 P(tie), weighted (Mann-Whitney form)."""
    pos, neg = _tie_groups(weights, y_pos, scores, descending=False)
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    return _ratio(wins, pos.sum(axis=1) * neg.sum(axis=1))


def weighted_average_precision(weights: np.ndarray, y_pos: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision per resample: sum over thresholds of (recall gain) x precision."""
    pos, neg = _tie_groups(weights, y_pos, scores, descending=True)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    precision = np.nan_to_num(_ratio(tp, tp + fp))
    return _ratio(np.sum(pos * precision, axis=1), pos.sum(axis=1))


def classification_statistic(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    n_bins: int = DEFAULT_BINS,
    macro_over: dict[str, Sequence[str]] | None = None,
) -> Statistic:
    """The weighted version of :func:`covidxray.evaluation.metrics.point_metrics`, same keys.

    ``macro_over`` names, per macro metric, the classes the point estimate averaged over (default: all).
    """
    y = np.asarray(y, np.int64)
    probs = np.asarray(probs, np.float64)
    pred = probs.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], LOSS_EPS, 1.0))
    conf, _ = confidence_and_correct(y, probs)
    bins = np.eye(n_bins)[bin_index(conf, n_bins)] * (correct - conf)[:, None]  # (N, M) signed gaps
    macro_over = macro_over or {}

    def statistic(weights: np.ndarray) -> dict[str, np.ndarray]:
        total = weights.sum(axis=1)
        out = {
            "accuracy": _ratio(weights @ correct, total),
            "loss": _ratio(weights @ nll, total),
            "ece": _ratio(np.abs(weights @ bins).sum(axis=1), total),
        }
        for k, cls in enumerate(classes):
            for name, v in weighted_rates(weights, y == k, pred == k).items():
                out[key(name, cls)] = v
            out[key("roc_auc", cls)] = weighted_roc_auc(weights, y == k, probs[:, k])
            out[key("pr_auc", cls)] = weighted_average_precision(weights, y == k, probs[:, k])
        for name in ("roc_auc", "pr_auc"):
            over = list(macro_over.get(name, classes))
            if over:
                out[key(name, "macro")] = np.mean([out[key(name, c)] for c in over], axis=0)
        return out

    return statistic
