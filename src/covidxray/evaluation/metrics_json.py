"""Predictions -> the metrics dictionary written as ``metrics.json``.

:func:`evaluate_predictions` turns probabilities (and features) into metrics overall and per source, with
patient-bootstrap intervals, the confounding warnings and the shortcut probe; :func:`operating_point_metrics`
adds the validation-chosen COVID threshold. Layout of one group of images: see :func:`group_metrics`.
No torch and no files here: :mod:`.evaluate` runs a bundle and writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from covidxray.about import NOT_FOR_CLINICAL_USE
from covidxray.evaluation.bootstrap import classification_statistic, patient_bootstrap
from covidxray.evaluation.calibration import DEFAULT_BINS, reliability_bins
from covidxray.evaluation.metrics import (
    CLASS_METRICS,
    MACRO_METRICS,
    confusion,
    encode_labels,
    key,
    point_metrics,
)
from covidxray.evaluation.operating_point import (
    DEFAULT_TARGET_SENSITIVITY,
    choose_operating_point,
    rates_with_intervals,
)
from covidxray.evaluation.probe import source_probe


@dataclass
class EvaluationOptions:
    """Knobs of an evaluation; all are recorded in ``metrics.json``."""

    split: str = "test"
    n_resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    n_bins: int = DEFAULT_BINS
    operating_class: str = "covid"
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY
    val_split: str = "val"
    store_operating_point: bool = True
    probe: bool = True
    probe_folds: int = 5
    batch_size: int = 32
    tta: int = 1  # test-time views averaged (1: none); see covidxray.preprocess.TTA_VIEWS
    lung_attention: int = 300  # images sampled for the in-lung Grad-CAM share (0: skip)


def _metric(value: float | None, interval, reason: str = "", note: str = "") -> dict[str, Any]:
    d: dict[str, Any] = {"value": value, "ci": None}
    if value is None:
        d["reason"] = reason
    elif interval is not None:
        d["ci"] = interval.to_list()
        if interval.low is None:
            d["ci_reason"] = interval.reason
    if note:
        d["note"] = note
    return d


def group_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    patient_ids: Sequence[str],
    options: EvaluationOptions | None = None,
) -> dict[str, Any]:
    """Every metric of one group of images, each as ``{"value", "ci", "reason"?}``.

    Keys: n_images, n_patients, label_counts, accuracy, loss, ece, per_class[cls][metric], macro[metric],
    confusion_matrix, calibration (reliability bins), roc_curves[cls] (fpr, tpr).
    """
    from sklearn.metrics import roc_curve

    o = options or EvaluationOptions()
    y = np.asarray(y, np.int64)
    probs = np.asarray(probs, np.float64)
    point = point_metrics(y, probs, classes, o.n_bins)
    intervals = {}
    if len(y):
        macro_over = {m: [c for c in classes if point.values[key(m, c)] is not None] for m in MACRO_METRICS}
        statistic = classification_statistic(y, probs, classes, o.n_bins, macro_over)
        intervals = patient_bootstrap(statistic, patient_ids, o.n_resamples, o.seed, o.level)

    def m(name: str) -> dict[str, Any]:
        return _metric(
            point.values.get(name),
            intervals.get(name),
            point.reasons.get(name, ""),
            point.notes.get(name, ""),
        )

    out: dict[str, Any] = {
        "n_images": int(len(y)),
        "n_patients": len(set(patient_ids)),
        "label_counts": {c: int(np.sum(y == k)) for k, c in enumerate(classes)},
        "accuracy": m("accuracy"),
        "loss": m("loss"),
        "ece": m("ece"),
        "per_class": {c: {name: m(key(name, c)) for name in CLASS_METRICS} for c in classes},
        "macro": {name: m(key(name, "macro")) for name in MACRO_METRICS},
        "confusion_matrix": {
            "classes": list(classes),
            "rows_true_columns_predicted": confusion(y, probs).tolist(),
        },
    }
    if len(y):
        out["calibration"] = reliability_bins(y, probs, o.n_bins).to_dict()
        curves = {}
        for k, c in enumerate(classes):
            if point.values[key("roc_auc", c)] is not None:
                fpr, tpr, _ = roc_curve(y == k, probs[:, k])
                curves[c] = {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}
        out["roc_curves"] = curves
    return out


def confounding_warnings(labels: Sequence[str], sources: Sequence[str]) -> list[str]:
    """A warning for each label whose images all come from one source, when several sources are evaluated."""
    labels, sources = np.asarray(labels, dtype=str), np.asarray(sources, dtype=str)
    all_sources = sorted(set(sources.tolist()))
    if len(all_sources) < 2:
        return []
    warnings = []
    for label in sorted(set(labels.tolist())):
        from_sources = sorted(set(sources[labels == label].tolist()))
        if len(from_sources) == 1:
            warnings.append(
                f"label/source confounding: every '{label}' image in the evaluated data comes from the single "
                f"source '{from_sources[0]}' (sources present: {', '.join(all_sources)}). A model can score well "
                f"on '{label}' by recognising that source rather than the disease; see the per-source tables and "
                "the shortcut probe, and the leave-one-source-out evaluation (covidxray crossval)."
            )
    return warnings


def label_by_source(labels: Sequence[str], sources: Sequence[str]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for label, source in zip(map(str, labels), map(str, sources), strict=True):
        table.setdefault(label, {}).setdefault(source, 0)
        table[label][source] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(table.items())}


def evaluate_predictions(
    labels: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    patient_ids: Sequence[str],
    sources: Sequence[str],
    features: np.ndarray | None = None,
    options: EvaluationOptions | None = None,
) -> dict[str, Any]:
    """The metrics dictionary (overall, per source, warnings, probe) of one set of predictions."""
    o = options or EvaluationOptions()
    y = encode_labels(labels, classes)
    patient_ids = np.asarray(patient_ids, dtype=str)
    sources = np.asarray(sources, dtype=str)
    result: dict[str, Any] = {
        "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
        "method": method_description(o),
        "data": {
            "split": o.split,
            "n_images": int(len(y)),
            "n_patients": len(set(patient_ids.tolist())),
            "sources": {s: int(np.sum(sources == s)) for s in sorted(set(sources.tolist()))},
            "label_by_source": label_by_source(labels, sources),
        },
        "warnings": confounding_warnings(labels, sources),
        "overall": group_metrics(y, probs, classes, patient_ids, o),
        "per_source": {},
    }
    if len(result["data"]["sources"]) == 1:
        (only,) = result["data"]["sources"]
        result["notes"] = [
            f"all evaluated images come from one source ('{only}'); these numbers say nothing "
            "about X-rays from other sources."
        ]
    for s in result["data"]["sources"]:
        mask = sources == s
        result["per_source"][s] = group_metrics(y[mask], probs[mask], classes, patient_ids[mask], o)
    if o.probe and features is not None:
        result["probe"] = source_probe(
            features, sources, patient_ids, labels, o.probe_folds, o.seed
        ).to_dict()
    return result


def method_description(o: EvaluationOptions) -> dict[str, Any]:
    return {
        "prediction": "arg-max of the class probabilities; per-class metrics are one-vs-rest",
        "bootstrap": {
            "unit": "patient",
            "n_resamples": o.n_resamples,
            "seed": o.seed,
            "level": o.level,
            "interval": "percentile, over the resamples in which the metric is defined",
        },
        "ece": {"bins": o.n_bins, "binning": "equal-width on [0, 1]", "confidence": "top-class probability"},
        "pr_auc": "average precision (sklearn.metrics.average_precision_score)",
        "macro": "mean over the classes whose value is defined",
        "loss": "mean cross-entropy (natural log) of the true class",
        "options": asdict(o),
    }


def operating_point_metrics(
    classes: Sequence[str],
    test: dict[str, np.ndarray],
    val: dict[str, np.ndarray] | None,
    options: EvaluationOptions,
) -> tuple[dict[str, Any], Any]:
    """The operating point section, and the :class:`OperatingPointResult` (None when it cannot be chosen).

    ``test`` / ``val`` hold ``labels``, ``probs``, ``patient_ids``, ``sources`` arrays.
    """
    o = options
    cls = o.operating_class
    if cls not in classes:
        return {"reason": f"the model has no class '{cls}' (classes: {', '.join(classes)})"}, None
    k = list(classes).index(cls)
    if val is None or not len(val["labels"]):
        return {"reason": f"no '{o.val_split}' rows in the manifest to choose the threshold on"}, None
    val_pos = np.asarray(val["labels"], dtype=str) == cls
    if not val_pos.any():
        return {"reason": f"no '{cls}' images in the '{o.val_split}' split to choose the threshold on"}, None
    test_pos = np.asarray(test["labels"], dtype=str) == cls
    op = choose_operating_point(
        cls,
        val_pos,
        val["probs"][:, k],
        test_pos,
        test["probs"][:, k],
        test["patient_ids"],
        o.target_sensitivity,
        o.n_resamples,
        o.seed,
        o.val_split,
        o.split,
    )
    section = op.bundle_entry()
    sources = np.asarray(test["sources"], dtype=str)
    patients = np.asarray(test["patient_ids"], dtype=str)
    section["per_source"] = {
        s: rates_with_intervals(
            test_pos[sources == s],
            test["probs"][sources == s, k],
            op.threshold,
            patients[sources == s],
            o.n_resamples,
            o.seed,
        )
        for s in sorted(set(sources.tolist()))
    }
    return section, op
