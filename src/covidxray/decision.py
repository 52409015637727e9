"""Operating points and the decision: how a label follows from the class probabilities (pure, no torch).

A bundle's ``config.json`` stores named operating points and which one decides::

    "operating_points": {
      "screening": {"class": "covid", "threshold": 0.105, "rule": "sensitivity>=0.95",
                    "chosen_on": {"description": "val split", "n_images": 1498, "n_positive": 305,
                                  "n_negative": 1193, ...},
                    "threshold_ci": [lo, hi],
                    "sensitivity": {"value": 0.95, "ci": [lo, hi]}, "specificity": {...}},
      "balanced":  {"class": "covid", "threshold": 0.41, "rule": "max min(sensitivity,specificity)", ...},
      "site":      {... optional, e.g. "rule": "specificity>=0.9" chosen on a hospital's images ...}
    },
    "decision": "screening"

plus ``"operating_point"``: a copy of the deciding point, so that covidxray versions that knew only one point
still apply the same decision. Bundles written before named points existed hold only ``operating_point``; they
read as ``{"screening": <it>}`` with ``decision = "screening"``.

The rule: the point's class when its probability ``>= threshold``, otherwise the most probable *other* class.
Without a deciding point the label is the most probable class. :func:`decide` returns the label together with a
:class:`Decision` that names the point, its threshold and the probability compared with it, so every surface can
say why it called what it called.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SCREENING = "screening"
BALANCED = "balanced"
SITE = "site"
POINT_NAMES = (SCREENING, BALANCED, SITE)
ARGMAX_RULE = "the most probable class"
RULE_TEXT = "the class when its probability >= threshold, otherwise the most probable other class"


class OperatingPointError(ValueError):
    """Operating points that cannot be used (no threshold, unknown class, decision naming no point)."""


def read_operating_points(config: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The named operating points and the name of the deciding one from a config dict (bundle or ONNX).

    Accepts the current form (``operating_points`` + ``decision``) and the old single ``operating_point``
    (read as the deciding ``screening`` point). Returns ``({}, None)`` when the model has none (arg-max).
    """
    points = config.get("operating_points")
    if points:
        points = {str(k): dict(v) for k, v in points.items()}
        decision = config.get("decision")
        if decision is None and len(points) == 1:
            decision = next(iter(points))
        return points, decision
    old = config.get("operating_point")
    if old and old.get("threshold") is not None:
        return {SCREENING: dict(old)}, SCREENING
    return {}, None


def validate_operating_points(
    points: dict[str, dict[str, Any]], decision: str | None, classes: list[str]
) -> None:
    """Raise :class:`OperatingPointError` saying what is wrong with ``points`` / ``decision``."""
    for name, p in points.items():
        if not isinstance(p, dict):
            raise OperatingPointError(f"operating point {name!r} must be a mapping, got {type(p).__name__}")
        t = p.get("threshold")
        if not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
            raise OperatingPointError(
                f"operating point {name!r}: threshold must be a probability in [0, 1], got {t!r}"
            )
        cls = p.get("class", "covid")
        if cls not in classes:
            raise OperatingPointError(
                f"operating point {name!r}: class {cls!r} is not a class of the model ({', '.join(classes)})"
            )
    if decision is not None and decision not in points:
        raise OperatingPointError(
            f"decision {decision!r} names no operating point (points: {', '.join(points) or 'none'})"
        )


@dataclass(frozen=True)
class Decision:
    """Why a label was given: the deciding point, its threshold and the probability compared with it.

    ``point`` is None when the label is the plain arg-max (the model stores no operating point).
    """

    point: str | None
    cls: str | None = None
    threshold: float | None = None
    probability: float | None = None
    rule: str | None = None  # how the threshold was chosen, e.g. "sensitivity>=0.95"
    chosen_on: str | None = None  # where, in words

    @property
    def met(self) -> bool | None:
        """Whether ``probability >= threshold`` (None for arg-max)."""
        if self.threshold is None or self.probability is None:
            return None
        return self.probability >= self.threshold

    def explain(self, label: str | None = None) -> str:
        """One line: which point decided and the probability beside the threshold."""
        if self.point is None or self.threshold is None:
            return "the most probable class (the model stores no operating point)"
        how = f"{self.point} operating point" + (f", {self.rule}" if self.rule else "")
        if self.chosen_on:
            how += f" on {self.chosen_on}"
        p, t, c = self.probability, self.threshold, self.cls
        if self.met:
            return f"{c}: p({c}) = {p:.3f} >= threshold {t:.3f} ({how})"
        other = f"{label}, the most probable other class" if label else "the most probable other class"
        return f"{other}: p({c}) = {p:.3f} < threshold {t:.3f} ({how})"

    def to_dict(self, label: str | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("cls")
        d["met"] = self.met
        d["explanation"] = self.explain(label)
        return d


def chosen_on_text(point: dict[str, Any]) -> str | None:
    """Where a point's threshold was chosen, in a few words (from its ``chosen_on``)."""
    chosen = point.get("chosen_on")
    if not isinstance(chosen, dict):
        return str(chosen) if chosen else None
    where = chosen.get("description") or (f"the {chosen['split']} split" if chosen.get("split") else None)
    n = chosen.get("n_images")
    if where and n is not None:
        return f"{where}, {n} images"
    return where


def point_rule(point: dict[str, Any]) -> str | None:
    """How a point's threshold was chosen (``rule``; old bundles: from ``target_sensitivity``)."""
    rule = point.get("rule")
    if rule and rule != RULE_TEXT:
        return str(rule)
    if point.get("target_sensitivity") is not None:
        return f"sensitivity>={float(point['target_sensitivity']):.2f}"
    return None


def decide(
    probabilities: np.ndarray,
    classes: list[str],
    points: dict[str, dict[str, Any]],
    decision: str | None,
) -> tuple[str, Decision]:
    """The label of one probability vector and the :class:`Decision` that made it."""
    p = np.asarray(probabilities, dtype=np.float64)
    point = points.get(decision) if decision else None
    if point and point.get("threshold") is not None and point.get("class", "covid") in classes:
        cls = point.get("class", "covid")
        k = classes.index(cls)
        t = float(point["threshold"])
        d = Decision(decision, cls, t, float(p[k]), point_rule(point), chosen_on_text(point))
        if p[k] >= t:
            return cls, d
        others = p.copy()
        others[k] = -np.inf
        return classes[int(np.argmax(others))], d
    return classes[int(np.argmax(p))], Decision(None)


def decide_labels(
    probabilities: np.ndarray,
    classes: list[str],
    points: dict[str, dict[str, Any]],
    decision: str | None,
) -> np.ndarray:
    """:func:`decide` for a (N, K) array, vectorised: the labels as a string array."""
    p = np.asarray(probabilities, dtype=np.float64)
    point = points.get(decision) if decision else None
    if point and point.get("class", "covid") in classes and point.get("threshold") is not None:
        k = classes.index(point.get("class", "covid"))
        others = p.copy()
        others[:, k] = -np.inf
        idx = np.where(p[:, k] >= float(point["threshold"]), k, others.argmax(axis=1))
    else:
        idx = p.argmax(axis=1)
    return np.asarray(classes, dtype=object)[idx].astype(str)


def rule_in_words(classes: list[str], points: dict[str, dict[str, Any]], decision: str | None) -> str:
    """The decision rule in words, naming the deciding point."""
    point = points.get(decision) if decision else None
    if point and point.get("threshold") is not None and point.get("class", "covid") in classes:
        cls = point.get("class", "covid")
        rule = point_rule(point)
        where = chosen_on_text(point)
        why = (
            f"{decision} operating point" + (f", {rule}" if rule else "") + (f" on {where}" if where else "")
        )
        return (
            f"{cls} when p({cls}) >= {float(point['threshold']):.4g}, otherwise the most probable other class "
            f"({why})"
        )
    return ARGMAX_RULE
