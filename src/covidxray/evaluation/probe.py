"""The shortcut probe: can a linear classifier read the image *source* off the model's penultimate features?

DeGrave, Janizek & Lee (Nature Machine Intelligence 2021, doi:10.1038/s42256-021-00338-7) showed COVID-19
classifiers trained on mixed collections learn where an image came from instead of the disease. Here a logistic
regression (standardised features, balanced class weights) is cross-validated with folds grouped by patient
(:class:`sklearn.model_selection.StratifiedGroupKFold`: no patient in both a training and a test fold) to predict
the source; its balanced accuracy is reported beside chance (1 / number of sources) and beside a *label-only
baseline*: the same probe given only the true diagnosis. When diagnoses and sources are confounded, a perfect
disease model would also "predict" the source that well; a probe far above that baseline means the features
carry source information beyond the disease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_FOLDS = 5
CITATION = "DeGrave, Janizek & Lee, Nature Machine Intelligence 2021 (doi:10.1038/s42256-021-00338-7)"
EXPLANATION = (
    "The shortcut probe trains a linear classifier on the model's penultimate features to predict which source "
    "collection each image came from (cross-validated, folds grouped by patient). A balanced accuracy well above "
    "chance -- and above the label-only baseline, which is what the diagnosis alone reveals about the source -- "
    "means the features encode the image's origin (hospital, scanner, age group, file format, burnt-in text), "
    "which the model can use as a shortcut instead of the disease; such a model tends to fail on X-rays from "
    f"elsewhere ({CITATION})."
)


@dataclass
class ProbeResult:
    balanced_accuracy: float | None
    chance: float | None
    label_only_baseline: float | None
    sources: list[str] = field(default_factory=list)
    recall_per_source: dict[str, float] = field(default_factory=dict)
    n_images: int = 0
    n_patients: int = 0
    n_folds: int = 0
    n_features: int = 0
    left_out: dict[str, str] = field(default_factory=dict)  # source -> why it is not in the probe
    reason: str = ""  # why the probe could not run

    def to_dict(self) -> dict:
        d = asdict(self)
        d["explanation"] = EXPLANATION
        return d


def _probe_model(seed: int):
    return make_pipeline(
        StandardScaler(),
        LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed),
    )


def source_probe(
    features: np.ndarray,
    sources: Sequence[str],
    patient_ids: Sequence[str],
    labels: Sequence[str] | None = None,
    n_folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> ProbeResult:
    """Cross-validated balanced accuracy of predicting ``sources`` from ``features`` (N, F)."""
    features = np.asarray(features, np.float64)
    sources = np.asarray(sources, dtype=str)
    groups = np.asarray(patient_ids, dtype=str)
    if features.ndim != 2 or len(features) != len(sources) or len(groups) != len(sources):
        raise ValueError(f"expected features (N, F) with N sources and patient ids, got {features.shape}")
    left_out = {}
    for s in np.unique(sources):
        n_pat = len(np.unique(groups[sources == s]))
        if n_pat < 2:
            left_out[str(s)] = f"{n_pat} patient: cross-validation by patient needs at least 2"
    keep = ~np.isin(sources, list(left_out))
    features, sources, groups = features[keep], sources[keep], groups[keep]
    kept = sorted(np.unique(sources).tolist())
    result = ProbeResult(
        None,
        None,
        None,
        kept,
        n_images=int(keep.sum()),
        n_patients=len(np.unique(groups)),
        n_features=int(features.shape[1]),
        left_out=left_out,
    )
    if len(kept) < 2:
        result.reason = f"needs images from at least 2 sources, the evaluated data has {len(kept)} usable"
        return result
    min_patients = min(len(np.unique(groups[sources == s])) for s in kept)
    result.n_folds = min(n_folds, min_patients)
    result.chance = 1.0 / len(kept)
    cv = StratifiedGroupKFold(n_splits=result.n_folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(_probe_model(seed), features, sources, groups=groups, cv=cv)
    result.balanced_accuracy = float(balanced_accuracy_score(sources, pred))
    recalls = recall_score(sources, pred, labels=kept, average=None, zero_division=0)
    result.recall_per_source = {s: float(r) for s, r in zip(kept, recalls, strict=True)}
    if labels is not None:
        onehot = (np.asarray(labels, dtype=str)[keep][:, None] == np.unique(labels)[None, :]).astype(
            np.float64
        )
        base = cross_val_predict(_probe_model(seed), onehot, sources, groups=groups, cv=cv)
        result.label_only_baseline = float(balanced_accuracy_score(sources, base))
    return result
