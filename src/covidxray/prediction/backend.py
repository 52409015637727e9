"""What every prediction backend shares: the :class:`Backend` protocol, the load error, the model's version
string and the decision rule that turns probabilities into a label.

The backends (:mod:`.torch_backend`, :mod:`.onnx_backend`) and :mod:`.predictor` import this module; it
imports neither torch nor onnxruntime.

How the label is decided
------------------------
Without an operating point the label is the most probable class. When the bundle stores an operating point
(``{"class": "covid", "threshold": t, ...}``, chosen on validation data by ``covidxray evaluate`` for a target
sensitivity), the label is that class whenever its probability is ``>= t``; otherwise it is the most probable of
the *other* classes. ``Prediction.covid_threshold`` then holds ``t`` (None when the plain argmax was used). The
probabilities themselves are never changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from covidxray.bundle import BACKENDS, ModelLoadError

__all__ = ["BACKENDS", "Backend", "ModelLoadError", "decide_label", "decision_rule", "weights_version"]


class Backend(Protocol):
    """What a backend computes: probabilities (N, K) and penultimate features (N, F) of model inputs."""

    name: str
    config: dict[str, Any]
    version: str
    source: str

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


def decide_label(
    probabilities: np.ndarray, classes: list[str], operating_point: dict[str, Any] | None
) -> tuple[str, float | None]:
    """The label of one probability vector and the operating-point threshold used (None for argmax)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if operating_point and operating_point.get("threshold") is not None:
        cls = operating_point.get("class", "covid")
        if cls in classes:
            k = classes.index(cls)
            t = float(operating_point["threshold"])
            if p[k] >= t:
                return cls, t
            others = p.copy()
            others[k] = -np.inf
            return classes[int(np.argmax(others))], t
    return classes[int(np.argmax(p))], None


def decision_rule(classes: list[str], operating_point: dict[str, Any] | None) -> str:
    """:func:`decide_label` in words."""
    op = operating_point
    if op and op.get("threshold") is not None and op.get("class", "covid") in classes:
        cls = op.get("class", "covid")
        return f"{cls} when p({cls}) >= {float(op['threshold']):.4g}, otherwise the most probable other class"
    return "the most probable class"


def weights_version(architecture: str, weights: Path) -> str:
    """A model's version: ``<architecture>@<first 12 hex digits of the weights' SHA-256>``, the same for a
    bundle and its export (the web app's ``model_version`` and the audit log quote it)."""
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{architecture}@{h.hexdigest()[:12]}"
