"""The COVID operating point: a probability threshold chosen on validation data for a target sensitivity.

The rule is "COVID when p(covid) >= threshold, otherwise the most probable other class" (as the predictor
applies it). :func:`threshold_for_sensitivity` returns the *highest*
threshold whose sensitivity reaches the target (the most specific such rule), read off
:func:`sklearn.metrics.roc_curve`. It is chosen on the validation split and only then applied to the test split,
so the test sensitivity is an honest estimate and may fall short of the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from covidxray.evaluation.bootstrap import DEFAULT_RESAMPLES, Interval, patient_bootstrap, weighted_rates
from covidxray.evaluation.metrics import counts

DEFAULT_TARGET_SENSITIVITY = 0.95
RULE = "the class when its probability >= threshold, otherwise the most probable other class"


def threshold_for_sensitivity(y_pos: np.ndarray, scores: np.ndarray, target: float) -> float:
    """Highest threshold t with sensitivity(scores >= t) >= target; ValueError without positives."""
    y_pos = np.asarray(y_pos, bool)
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    if not y_pos.any():
        raise ValueError("no positive images: a sensitivity target cannot be met")
    if y_pos.all():  # roc_curve needs both classes; the lowest positive score reaches any target
        needed = int(np.ceil(target * y_pos.sum() - 1e-9))
        return float(np.sort(np.asarray(scores, np.float64))[::-1][needed - 1])
    _, tpr, thresholds = roc_curve(y_pos, np.asarray(scores, np.float64), drop_intermediate=False)
    return float(thresholds[np.argmax(tpr >= target - 1e-12)])


@dataclass
class OperatingPointResult:
    cls: str
    threshold: float
    target_sensitivity: float
    chosen_on: dict  # split name, image and patient counts, sensitivity/specificity reached there
    applied_to: dict  # the same on the evaluated split, with intervals

    def bundle_entry(self) -> dict:
        """What goes into the bundle's ``operating_point`` (read by the predictor)."""
        return {
            "class": self.cls,
            "threshold": self.threshold,
            "target_sensitivity": self.target_sensitivity,
            "rule": RULE,
            "test_sensitivity": self.applied_to["sensitivity"]["value"],
            "test_specificity": self.applied_to["specificity"]["value"],
            "chosen_on": self.chosen_on,
            "test": self.applied_to,
        }


def rates_at(y_pos: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    tp, fp, tn, fn = counts(y_pos, np.asarray(scores) >= threshold)
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
    }


def rates_with_intervals(
    y_pos: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    patient_ids: Sequence,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Sensitivity and specificity at ``threshold`` with patient-bootstrap 95 % intervals."""
    y_pos = np.asarray(y_pos, bool)
    pred = np.asarray(scores) >= threshold
    point = rates_at(y_pos, scores, threshold)

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        r = weighted_rates(w, y_pos, pred)
        return {"sensitivity": r["sensitivity"], "specificity": r["specificity"]}

    intervals: dict[str, Interval] = patient_bootstrap(statistic, patient_ids, n_resamples, seed)
    out: dict = {
        "n_images": int(y_pos.size),
        "n_positive": int(y_pos.sum()),
        "n_patients": len(set(patient_ids)),
    }
    for name, value in point.items():
        out[name] = {"value": value, "ci": intervals[name].to_list() if value is not None else None}
        if value is None:
            out[name]["reason"] = "no positive images" if name == "sensitivity" else "no negative images"
    return out


def choose_operating_point(
    cls: str,
    val_y_pos: np.ndarray,
    val_scores: np.ndarray,
    test_y_pos: np.ndarray,
    test_scores: np.ndarray,
    test_patient_ids: Sequence,
    target: float = DEFAULT_TARGET_SENSITIVITY,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    val_split: str = "val",
    test_split: str = "test",
) -> OperatingPointResult:
    """Threshold on validation data, then its test sensitivity/specificity with intervals."""
    threshold = threshold_for_sensitivity(val_y_pos, val_scores, target)
    chosen = {"split": val_split, "n_images": int(np.size(val_y_pos)), "n_positive": int(np.sum(val_y_pos))}
    chosen.update(rates_at(val_y_pos, val_scores, threshold))
    applied = {"split": test_split}
    applied.update(
        rates_with_intervals(test_y_pos, test_scores, threshold, test_patient_ids, n_resamples, seed)
    )
    return OperatingPointResult(cls, threshold, float(target), chosen, applied)
