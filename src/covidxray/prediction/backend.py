"""What every prediction backend shares: the :class:`Backend` protocol, the load error, the model's version
string and the decision rule that turns probabilities into a label.

The backends (:mod:`.torch_backend`, :mod:`.onnx_backend`) and :mod:`.predictor` import this module; it
imports neither torch nor onnxruntime.

How the label is decided
------------------------
Without an operating point the label is the most probable class. A bundle stores named operating points
(``screening``, ``balanced``, maybe ``site``) and ``decision``, the name of the one that gives the label: that
point's class whenever its probability is ``>= t``, otherwise the most probable of the *other* classes. The rule
and the operating-point data model live in :mod:`covidxray.decision` (a leaf: the bundle validates points with
it); the predictor applies :func:`~covidxray.decision.decide` with a backend's points, :func:`decision_rule`
says it in words for a config. The probabilities themselves
are never changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from covidxray.bundle import BACKENDS, ModelLoadError
from covidxray.decision import Decision, decide, read_operating_points, rule_in_words

__all__ = ["BACKENDS", "Backend", "Decision", "ModelLoadError", "decide", "decision_rule", "weights_version"]


class Backend(Protocol):
    """What a backend computes: probabilities (N, K) and penultimate features (N, F) of model inputs."""

    name: str
    config: dict[str, Any]
    version: str
    source: str

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


def decision_rule(config: dict[str, Any]) -> str:
    """How a model's label follows from its probabilities, naming the deciding operating point."""
    points, decision = read_operating_points(config)
    return rule_in_words(list(config["classes"]), points, decision)


def weights_version(architecture: str, weights: Path) -> str:
    """A model's version: ``<architecture>@<first 12 hex digits of the weights' SHA-256>``, the same for a
    bundle and its export (the web app's ``model_version`` and the audit log quote it)."""
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{architecture}@{h.hexdigest()[:12]}"
