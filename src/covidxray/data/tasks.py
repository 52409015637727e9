"""The classification task: manifest labels (covid | normal | pneumonia) mapped onto a model's classes.

One rule, used by the trainer and by the evaluation alike:

- a label that is one of ``classes`` stays as it is;
- otherwise, when the classes include the catch-all ``"rest"`` (e.g. ``["covid", "rest"]``, the seeds' COVID vs
  everything else), it becomes ``"rest"``;
- otherwise (and for a missing or empty label) the row is not part of the task (``NaN``): ``["covid", "normal"]`` drops the pneumonia rows, as the
  seeds' COVID vs normal models did.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from covidxray.vocabulary import REST


def task_labels(labels: pd.Series, classes: Sequence[str]) -> pd.Series:
    """``labels`` mapped onto ``classes`` (same index); NaN marks rows the task leaves out."""
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"classes must be at least two distinct names, got {classes}")
    text = labels.astype(str).str.strip()
    kept = text.where(text.isin(classes))
    if REST in classes:
        labelled = labels.notna() & (text != "")
        kept = kept.where(kept.notna() | ~labelled, REST)
    return kept
