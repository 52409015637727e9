"""evaluate_predictions: per-source breakdown, confounding warnings, the shortcut probe; the self-contained report."""

import json
import re

import numpy as np
import pytest

from covidxray import NOT_FOR_CLINICAL_USE
from covidxray.evaluation.metrics_json import EvaluationOptions, confounding_warnings, evaluate_predictions
from covidxray.evaluation.metrics_report import evaluation_report
from covidxray.evaluation.probe import source_probe

CLASSES = ["covid", "normal", "pneumonia"]
FAST = EvaluationOptions(n_resamples=200)


def _predictions(seed=0):
    """Source 'cohen' has covid + pneumonia, 'kermany' normal + pneumonia (no covid), 2 images per patient."""
    rng = np.random.default_rng(seed)
    rows = (
        [("cohen", "covid")] * 20
        + [("cohen", "pneumonia")] * 10
        + [("kermany", "normal")] * 20
        + [("kermany", "pneumonia")] * 20
    )
    sources = np.array([s for s, _ in rows for _ in range(2)])
    labels = np.array([lab for _, lab in rows for _ in range(2)])
    patients = np.array([f"{s}-{i}" for i, (s, _) in enumerate(rows) for _ in range(2)])
    y = np.array([CLASSES.index(lab) for lab in labels])
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # penultimate features: 8 dims, the first one carries the source
    features = rng.normal(size=(len(y), 8))
    features[:, 0] += 3.0 * (sources == "kermany")
    return labels, probs, patients, sources, features


def test_single_source_label_warning():
    labels = ["covid", "covid", "normal", "normal", "pneumonia"]
    sources = ["cohen", "cohen", "cohen", "kermany", "kermany"]
    warnings = confounding_warnings(labels, sources)
    assert len(warnings) == 2
    assert "'covid'" in warnings[0] and "'cohen'" in warnings[0]
    assert "'pneumonia'" in warnings[1] and "'kermany'" in warnings[1]
    assert confounding_warnings(["covid", "normal"], ["a", "a"]) == []  # one source: nothing to confound


def test_per_source_breakdown_with_a_missing_class():
    labels, probs, patients, sources, features = _predictions()
    r = evaluate_predictions(labels, probs, CLASSES, patients, sources, features, FAST)
    assert set(r["per_source"]) == {"cohen", "kermany"}
    kermany = r["per_source"]["kermany"]
    assert kermany["n_images"] == 80 and kermany["n_patients"] == 40
    covid = kermany["per_class"]["covid"]
    assert covid["sensitivity"]["value"] is None and covid["sensitivity"]["reason"] == "no covid images"
    assert covid["roc_auc"]["value"] is None and covid["roc_auc"]["ci"] is None
    assert "covid undefined" in kermany["macro"]["roc_auc"]["note"]
    assert kermany["per_class"]["normal"]["roc_auc"]["value"] is not None
    # overall metrics have intervals around them
    acc = r["overall"]["accuracy"]
    assert acc["ci"][0] <= acc["value"] <= acc["ci"][1]
    assert r["overall"]["n_patients"] == 70
    # covid comes only from cohen and normal only from kermany
    assert len(r["warnings"]) == 2 and "covid" in r["warnings"][0]
    json.dumps(r)  # serialisable as metrics.json


def test_probe_reads_source_from_features():
    labels, _, patients, sources, features = _predictions()
    probe = source_probe(features, sources, patients, labels)
    assert probe.chance == pytest.approx(0.5)
    assert probe.balanced_accuracy > 0.9
    assert probe.n_folds == 5
    noise = np.random.default_rng(1).normal(size=features.shape)
    assert source_probe(noise, sources, patients).balanced_accuracy < 0.75


def test_probe_not_applicable_with_one_source():
    probe = source_probe(np.zeros((4, 3)), ["a"] * 4, ["p1", "p1", "p2", "p3"])
    assert probe.balanced_accuracy is None and "at least 2 sources" in probe.reason


def test_report_is_self_contained_and_states_limits(tmp_path):
    labels, probs, patients, sources, features = _predictions()
    result = evaluate_predictions(labels, probs, CLASSES, patients, sources, features, FAST)
    md_path, html_path = evaluation_report(result).write(tmp_path)
    page = html_path.read_text()
    md = md_path.read_text()
    assert NOT_FOR_CLINICAL_USE in page and NOT_FOR_CLINICAL_USE in md
    assert "WARNING" in page and "WARNING" in md
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)  # no external assets
    assert "<script" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == 9  # 3 figures x (all sources + 2 sources)
    assert "n/a (no covid images)" in md
    assert "Shortcut probe" in md and "DeGrave" in md
    for png in re.findall(r"\]\((figures/[^)]+\.png)\)", md):
        assert (tmp_path / png).stat().st_size > 1000
