"""The patient bootstrap: weighted metrics equal sklearn's, resampling is by patient, intervals behave."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from covidxray.evaluation.bootstrap import (
    classification_statistic,
    patient_bootstrap,
    resample_patients,
    weighted_average_precision,
    weighted_roc_auc,
)
from covidxray.evaluation.metrics import point_metrics

CLASSES = ["covid", "normal", "pneumonia"]


def _data(n_patients: int, images_per_patient: int = 2, seed: int = 0):
    """Patients with one label each; the true class's score is raised so AUC is about 0.8."""
    rng = np.random.default_rng(seed)
    y_patient = rng.integers(0, 3, n_patients)
    y = np.repeat(y_patient, images_per_patient)
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], images_per_patient)
    return y, probs, patients


def test_weighted_auc_and_ap_match_sklearn_with_sample_weight():
    rng = np.random.default_rng(1)
    y_pos = rng.random(60) < 0.4
    scores = np.round(rng.random(60), 1)  # many ties
    weights = rng.integers(0, 4, size=(5, 60)).astype(float)
    auc = weighted_roc_auc(weights, y_pos, scores)
    ap = weighted_average_precision(weights, y_pos, scores)
    for b in range(5):
        assert auc[b] == pytest.approx(roc_auc_score(y_pos, scores, sample_weight=weights[b]))
        assert ap[b] == pytest.approx(average_precision_score(y_pos, scores, sample_weight=weights[b]))


def test_unit_weights_reproduce_point_metrics():
    y, probs, _ = _data(40)
    point = point_metrics(y, probs, CLASSES).values
    weighted = classification_statistic(y, probs, CLASSES)(np.ones((1, len(y))))
    assert set(weighted) == set(point)
    for name, value in point.items():
        assert weighted[name][0] == pytest.approx(value), name


def test_resampling_draws_patients_not_images():
    patients = np.array(["a", "a", "a", "b", "c", "c"])
    counts, row_patient = resample_patients(patients, n_resamples=300, seed=0)
    assert counts.shape == (300, 3) and (counts.sum(axis=1) == 3).all()
    weights = counts[:, row_patient]
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()  # patient a
    assert (weights[:, 4] == weights[:, 5]).all()  # patient c
    assert (counts == 0).any() and (counts >= 2).any()  # some patients left out, some drawn twice
    again, _ = resample_patients(patients, n_resamples=300, seed=0)
    assert np.array_equal(counts, again)  # seeded


def test_clustered_interval_is_wider_than_an_image_level_one():
    # 30 patients with 10 identical images each: only 30 independent observations, not 300
    y1, probs1, _ = _data(30, images_per_patient=1)
    y, probs = np.repeat(y1, 10), np.repeat(probs1, 10, axis=0)
    patients = np.repeat(np.arange(30), 10).astype(str)
    stat = classification_statistic(y, probs, CLASSES)
    by_patient = patient_bootstrap(stat, patients, n_resamples=400, seed=0)["accuracy"]
    by_image = patient_bootstrap(stat, np.arange(len(y)).astype(str), n_resamples=400, seed=0)["accuracy"]
    assert by_patient.high - by_patient.low > 2 * (by_image.high - by_image.low)


@pytest.mark.parametrize(
    "name", ["accuracy", "roc_auc[covid]", "sensitivity[normal]", "ece", "roc_auc[macro]"]
)
def test_interval_covers_point_estimate_and_narrows_with_more_patients(name):
    widths = []
    for n_patients in (40, 400):
        y, probs, patients = _data(n_patients, seed=3)
        point = point_metrics(y, probs, CLASSES).values[name]
        ci = patient_bootstrap(classification_statistic(y, probs, CLASSES), patients, 500, seed=0)[name]
        assert ci.low <= point <= ci.high
        widths.append(ci.high - ci.low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(10) in theory


def test_rare_class_interval_is_missing_with_reason():
    # one covid patient among 30: over a third of the resamples miss it, so no covid sensitivity interval
    y = np.array([0] + [1] * 29)
    probs = np.tile([0.2, 0.7, 0.1], (30, 1))
    patients = np.arange(30).astype(str)
    ci = patient_bootstrap(classification_statistic(y, probs, CLASSES), patients, 200, seed=0)
    assert ci["sensitivity[covid]"].low is None and "defined in only" in ci["sensitivity[covid]"].reason
    assert ci["accuracy"].low is not None
