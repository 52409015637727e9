"""How a small ensemble combines its members: the same classes, probabilities averaged.

Members may differ in architecture and preprocessing (each preprocesses with its own bundle's definition); they
must predict the same classes. A member whose classes come in another order is re-ordered to the first member's.
Pure NumPy: the predictor (torch and ONNX backends) and evaluation both use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["EnsembleError", "average_probabilities", "class_columns"]


class EnsembleError(ValueError):
    """The members of an ensemble cannot be combined (different classes)."""


def class_columns(classes: Sequence[str], member_classes: Sequence[str], member: str) -> np.ndarray:
    """Column indices that put ``member``'s probabilities in the order of ``classes`` (the first member's).

    Raises :class:`EnsembleError` naming the member and both class lists when they are not the same set.
    """
    if sorted(classes) != sorted(member_classes) or len(set(member_classes)) != len(member_classes):
        raise EnsembleError(
            f"{member}: predicts {list(member_classes)}, but the first model of the ensemble predicts "
            f"{list(classes)}; an ensemble averages probabilities, so every model must predict the same classes"
        )
    return np.array([list(member_classes).index(c) for c in classes], dtype=np.int64)


def average_probabilities(
    member_probabilities: Sequence[np.ndarray], columns: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """The mean of the members' probabilities (each (N, K)), after re-ordering each by its ``columns``."""
    if not member_probabilities:
        raise EnsembleError("an ensemble needs at least one model")
    cols = columns if columns is not None else [None] * len(member_probabilities)
    aligned = [p if c is None else p[:, c] for p, c in zip(member_probabilities, cols, strict=True)]
    return np.mean(np.stack(aligned), axis=0)
