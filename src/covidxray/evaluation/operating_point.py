"""COVID operating points: probability thresholds chosen on labelled data by a named rule.

:func:`choose_operating_points` is the one public chooser: on labelled images (validation rows, a hospital's
calibration images, pooled leave-one-source-out predictions) it returns the ``screening`` point (highest threshold
with sensitivity >= 0.95), the ``balanced`` point (maximum of min(sensitivity, specificity)) and optionally a
``site`` point for a target sensitivity or specificity, each with patient-bootstrap intervals of its threshold
(re-chosen in every resample) and of its sensitivity / specificity on the same images. Store them with
:func:`covidxray.bundle.set_operating_points`; :mod:`covidxray.decision` applies them.

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

from covidxray.decision import point_rule
from covidxray.evaluation.bootstrap import DEFAULT_RESAMPLES, Interval, patient_bootstrap, weighted_rates
from covidxray.evaluation.metrics import counts

DEFAULT_TARGET_SENSITIVITY = 0.95
RULE = "the class when its probability >= threshold, otherwise the most probable other class"
BALANCED_RULE = "max min(sensitivity,specificity)"
IN_SAMPLE_NOTE = (
    "sensitivity/specificity measured on the images the threshold was chosen on (optimistic); "
    "measure them on other images of the same site before trusting them"
)


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


# -- named points: screening / balanced / site --------------------------------------------------------------
def rule_text(kind: str, target: float | None = None) -> str:
    """``"sensitivity>=0.95"``, ``"specificity>=0.9"`` or the balanced rule."""
    if kind == "balanced":
        return BALANCED_RULE
    if kind not in ("sensitivity", "specificity") or target is None or not 0 < target <= 1:
        raise ValueError(
            f"a rule is 'balanced' or sensitivity/specificity with a target in (0, 1], got {kind} {target}"
        )
    return f"{kind}>={target:g}"


def _sweep(y_pos: np.ndarray, scores: np.ndarray, weights: np.ndarray):
    """Candidate thresholds (descending distinct scores) and weighted sensitivity / specificity at each,
    one row per weight vector: ``thresholds (T,), sens (B, T), spec (B, T)`` for ``weights (B, N)``."""
    order = np.argsort(-scores, kind="stable")
    s, y, w = scores[order], y_pos[order], weights[:, order]
    last = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(w * y, axis=1)[:, last]
    fp = np.cumsum(w * ~y, axis=1)[:, last]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / tp[:, -1:]
        spec = 1.0 - fp / fp[:, -1:]
    return s[last], sens, spec


def _choose(thresholds: np.ndarray, sens: np.ndarray, spec: np.ndarray, kind: str, target: float | None):
    """The chosen threshold per row (NaN where the row lacks a class)."""
    eps = 1e-12
    if kind == "sensitivity":
        ok = sens >= target - eps
        idx = np.argmax(ok, axis=1)  # highest threshold reaching the target
        out = thresholds[idx]
    elif kind == "specificity":
        ok = spec >= target - eps
        # lowest threshold keeping the target; none: just above the top score (calls nothing positive)
        idx = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)
        above = np.nextafter(thresholds[0], np.inf)
        out = np.where(ok.any(axis=1), thresholds[idx], above)
    else:
        m = np.minimum(sens, spec)
        best = np.nanmax(np.where(np.isnan(m), -np.inf, m), axis=1, keepdims=True)
        tie = np.where(
            m >= best - eps, sens + spec, -np.inf
        )  # ties: larger sens + spec, then higher threshold
        out = thresholds[np.argmax(tie, axis=1)]
    undefined = np.isnan(sens[:, -1]) | np.isnan(spec[:, 0])
    return np.where(undefined, np.nan, out)


def threshold_for(y_pos: np.ndarray, scores: np.ndarray, kind: str, target: float | None = None) -> float:
    """The threshold a rule chooses on these images (``kind``: sensitivity, specificity or balanced)."""
    y_pos = np.asarray(y_pos, bool)
    scores = np.asarray(scores, np.float64)
    rule_text(kind, target)
    if not y_pos.any() or y_pos.all():
        raise ValueError("choosing a threshold needs images of both classes (positive and negative)")
    thresholds, sens, spec = _sweep(y_pos, scores, np.ones((1, y_pos.size)))
    return float(_choose(thresholds, sens, spec, kind, target)[0])


def threshold_interval(
    y_pos: np.ndarray,
    scores: np.ndarray,
    patient_ids: Sequence,
    kind: str,
    target: float | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[float] | None:
    """95 % patient-bootstrap interval of the threshold, the rule re-applied in every resample."""
    y_pos = np.asarray(y_pos, bool)
    scores = np.asarray(scores, np.float64)

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        thresholds, sens, spec = _sweep(y_pos, scores, w)
        return {"threshold": _choose(thresholds, sens, spec, kind, target)}

    return patient_bootstrap(statistic, patient_ids, n_resamples, seed)["threshold"].to_list()


def choose_operating_points(
    y_true: Sequence,
    p: Sequence,
    patient_ids: Sequence | None = None,
    *,
    cls: str = "covid",
    screening_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    target: tuple[str, float] | None = None,
    description: str = "",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, dict]:
    """Operating points chosen on labelled images: ``{"screening": ..., "balanced": ..., ["site": ...]}``.

    ``y_true``: 1/True where the image is ``cls`` (COVID-19); ``p``: the model's probability of ``cls``;
    ``patient_ids`` (default: one patient per image) for the bootstrap. ``target`` = ("sensitivity" |
    "specificity", value) adds a ``site`` point for that target. ``description`` says where the images come
    from (e.g. "pooled leave-one-source-out predictions, 5 folds"). Each point holds ``class``, ``threshold``,
    ``threshold_ci``, ``rule``, ``chosen_on`` (description, n_images, n_patients, n_positive, n_negative) and
    ``sensitivity`` / ``specificity`` as ``{"value", "ci"}`` on those same images (in-sample). Pass the result to
    :func:`covidxray.bundle.set_operating_points`. Raises ValueError unless both classes are present.
    """
    y = np.asarray(y_true).astype(bool)
    scores = np.asarray(p, np.float64)
    if y.shape != scores.shape or y.ndim != 1:
        raise ValueError(f"y_true and p must be 1-D of the same length, got {y.shape} and {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("p holds NaN or infinite probabilities")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        missing = f"'{cls}' (positive)" if n_pos == 0 else f"non-'{cls}' (negative)"
        raise ValueError(
            f"choosing a threshold needs images of both classes, but the {y.size} images have no {missing} "
            f"image ({n_pos} positive, {n_neg} negative): add labelled images of the missing class"
        )
    pids = np.arange(y.size).astype(str) if patient_ids is None else np.asarray(patient_ids, dtype=str)
    chosen_on = {
        "description": description or "labelled images",
        "n_images": int(y.size),
        "n_patients": len(set(pids.tolist())),
        "n_positive": n_pos,
        "n_negative": n_neg,
    }
    rules: dict[str, tuple[str, float | None]] = {
        "screening": ("sensitivity", screening_sensitivity),
        "balanced": ("balanced", None),
    }
    if target is not None:
        rules["site"] = (str(target[0]), float(target[1]))
    points: dict[str, dict] = {}
    for name, (kind, value) in rules.items():
        t = threshold_for(y, scores, kind, value)
        rates = rates_with_intervals(y, scores, t, pids, n_resamples, seed)
        points[name] = {
            "class": cls,
            "threshold": t,
            "threshold_ci": threshold_interval(y, scores, pids, kind, value, n_resamples, seed),
            "rule": rule_text(kind, value),
            "chosen_on": dict(chosen_on),
            "sensitivity": rates["sensitivity"],
            "specificity": rates["specificity"],
            "note": IN_SAMPLE_NOTE,
        }
    return points


def apply_operating_points(
    points: dict[str, dict],
    classes: Sequence[str],
    labels: Sequence[str],
    probs: np.ndarray,
    patient_ids: Sequence,
    description: str,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, dict]:
    """Sensitivity / specificity with patient-bootstrap intervals of each stored point on other images."""
    out: dict[str, dict] = {}
    labels = np.asarray(labels, dtype=str)
    for name, point in points.items():
        cls = point.get("class", "covid")
        if cls not in classes:
            out[name] = {"reason": f"the model has no class '{cls}'"}
            continue
        k = list(classes).index(cls)
        rates = rates_with_intervals(
            labels == cls, probs[:, k], float(point["threshold"]), patient_ids, n_resamples, seed
        )
        out[name] = {
            "threshold": float(point["threshold"]),
            "rule": point_rule(point),
            "description": description,
        }
        out[name].update(rates)
    return out


DEFAULT_CURVE_SIZES = (25, 50, 100, 200, 400)


def site_size_curve(
    y_pos: np.ndarray,
    p: np.ndarray,
    test_y_pos: np.ndarray | None,
    test_p: np.ndarray | None,
    kind: str,
    target: float | None = None,
    sizes: Sequence[int] = DEFAULT_CURVE_SIZES,
    draws: int = 200,
    seed: int = 0,
) -> dict:
    """How the re-tuned threshold and its sensitivity / specificity vary with the number of site images.

    For each size n: ``draws`` random subsets of n calibration images (without replacement, seeded); the rule
    chooses a threshold on each subset (subsets lacking a class are skipped and counted), whose sensitivity and
    specificity are measured on the test images (or, without test images, on the calibration images not drawn).
    Rows give the median and the 2.5-97.5 % range over the draws.
    """
    y = np.asarray(y_pos, bool)
    s = np.asarray(p, np.float64)
    held_out = test_y_pos is not None and len(test_y_pos) > 0
    rng = np.random.default_rng(seed)
    rows, skipped_sizes = [], []
    for n in sizes:
        if n > y.size or (not held_out and n >= y.size):
            skipped_sizes.append(int(n))
            continue
        ths, sens, spec, lacking = [], [], [], 0
        for _ in range(draws):
            pick = rng.choice(y.size, size=n, replace=False)
            if y[pick].all() or not y[pick].any():
                lacking += 1
                continue
            t = threshold_for(y[pick], s[pick], kind, target)
            if held_out:
                ty, tp = np.asarray(test_y_pos, bool), np.asarray(test_p, np.float64)
            else:
                rest = np.setdiff1d(np.arange(y.size), pick)
                ty, tp = y[rest], s[rest]
            r = rates_at(ty, tp, t)
            ths.append(t)
            sens.append(np.nan if r["sensitivity"] is None else r["sensitivity"])
            spec.append(np.nan if r["specificity"] is None else r["specificity"])

        def summary(v: list[float]) -> dict:
            a = np.asarray(v, np.float64)
            a = a[~np.isnan(a)]
            if not a.size:
                return {"median": float("nan"), "low": float("nan"), "high": float("nan")}
            lo, med, hi = np.percentile(a, [2.5, 50, 97.5])
            return {"median": float(med), "low": float(lo), "high": float(hi)}

        if ths:
            rows.append(
                {
                    "n_images": int(n),
                    "draws": len(ths),
                    "draws_lacking_a_class": lacking,
                    "threshold": summary(ths),
                    "sensitivity": summary(sens),
                    "specificity": summary(spec),
                }
            )
    measured_on = "the test images" if held_out else "the calibration images left out of each draw"
    return {
        "rule": rule_text(kind, target),
        "description": (
            f"For each number of site images: {draws} random draws of that many calibration images; the rule "
            f"'{rule_text(kind, target)}' re-chooses the threshold on each draw, and its sensitivity and "
            f"specificity are measured on {measured_on}. Median and 2.5-97.5 % range over the draws; a narrow "
            "range means that many labelled images are enough for a stable threshold."
            + (
                f" Sizes not possible with {y.size} calibration images: {skipped_sizes}."
                if skipped_sizes
                else ""
            )
            + (
                f" Draws of more than half of the {y.size} calibration images overlap heavily, so their ranges "
                "understate the variability at another site of that size."
                if any(r["n_images"] > y.size / 2 for r in rows)
                else ""
            )
        ),
        "rows": rows,
        "skipped_sizes": skipped_sizes,
    }
