"""Named operating points: choosing them, storing them in a bundle, and every surface naming the deciding one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from covidxray.bundle import BundleError, load_bundle, read_config, set_operating_points
from covidxray.decision import decide, read_operating_points
from covidxray.evaluation.operating_point import (
    choose_operating_points,
    threshold_for,
    threshold_for_sensitivity,
)


def _scores(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    p = np.clip(rng.normal(np.where(y, 0.6, 0.35), 0.15), 0, 1)
    return y, p


def test_rules_match_their_definitions_on_the_roc_curve() -> None:
    y, p = _scores()
    assert threshold_for(y, p, "sensitivity", 0.95) == threshold_for_sensitivity(y, p, 0.95)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop roc_curve's +inf
    m = np.minimum(tpr, 1 - fpr)
    assert threshold_for(y, p, "balanced") == thr[np.flatnonzero(m == m.max())[0]]
    ok = 1 - fpr >= 0.9
    assert threshold_for(y, p, "specificity", 0.9) == thr[np.flatnonzero(ok)[-1]]


def test_choose_operating_points_records_rule_counts_and_intervals() -> None:
    y, p = _scores()
    points = choose_operating_points(
        y, p, target=("specificity", 0.9), description="unit test", n_resamples=200
    )
    assert list(points) == ["screening", "balanced", "site"]
    s, b, site = points["screening"], points["balanced"], points["site"]
    assert s["rule"] == "sensitivity>=0.95" and site["rule"] == "specificity>=0.9"
    assert b["rule"] == "max min(sensitivity,specificity)"
    assert s["sensitivity"]["value"] >= 0.95 and site["specificity"]["value"] >= 0.9
    assert s["threshold"] < b["threshold"] < site["threshold"]
    for point in points.values():
        lo, hi = point["threshold_ci"]
        assert lo <= point["threshold"] <= hi and lo < hi
        assert point["chosen_on"] == {
            "description": "unit test",
            "n_images": 300,
            "n_patients": 300,
            "n_positive": int(y.sum()),
            "n_negative": int((~y).sum()),
        }
        json.dumps(point)  # storable as is


def test_choose_operating_points_refuses_one_class() -> None:
    with pytest.raises(ValueError, match="no 'covid' \\(positive\\) image.*add labelled images"):
        choose_operating_points(np.zeros(10), np.linspace(0, 1, 10))


def test_old_single_point_reads_as_deciding_screening_point() -> None:
    old = {"operating_point": {"class": "covid", "threshold": 0.2, "target_sensitivity": 0.95}}
    points, decision = read_operating_points(old)
    assert decision == "screening" and points["screening"]["threshold"] == 0.2
    label, d = decide(np.array([0.15, 0.25, 0.6]), ["covid", "normal", "pneumonia"], points, decision)
    assert label == "pneumonia" and d.point == "screening" and d.met is False
    assert "p(covid) = 0.150 < threshold 0.200" in d.explain(label) and "sensitivity>=0.95" in d.explain(
        label
    )


def test_set_operating_points_round_trip_and_decision(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    y, p = _scores()
    points = choose_operating_points(y, p, description="pooled LOSO", n_resamples=100)
    set_operating_points(copy, points, "balanced")
    raw = json.loads((copy / "config.json").read_text())
    assert raw["decision"] == "balanced" and set(raw["operating_points"]) == {"screening", "balanced"}
    assert raw["operating_point"] == raw["operating_points"]["balanced"]  # for older readers
    cfg = load_bundle(copy).config
    assert cfg.decision == "balanced" and cfg.operating_point["rule"] == "max min(sensitivity,specificity)"
    with pytest.raises(BundleError, match="decision 'site' names no operating point"):
        set_operating_points(copy, points, "site")
    with pytest.raises(BundleError, match="class 'flu' is not a class of the model"):
        set_operating_points(copy, {"x": {"class": "flu", "threshold": 0.5}}, "x")
    assert read_config(copy).decision == "balanced"  # a refused change leaves the bundle as it was


def test_prediction_names_the_deciding_point(tiny_bundle: Path, tmp_path: Path, xray_png: Path) -> None:
    from covidxray import load_model

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    pc = load_model(copy).predict(xray_png).probabilities["covid"]
    points = {
        "screening": {"class": "covid", "threshold": max(pc - 0.01, 0.0), "rule": "sensitivity>=0.95"},
        "balanced": {
            "class": "covid",
            "threshold": min(pc + 0.01, 1.0),
            "rule": "max min(sensitivity,specificity)",
        },
    }
    set_operating_points(copy, points, "screening")
    pred = load_model(copy).predict(xray_png)
    assert pred.label == "covid" and pred.decision["point"] == "screening" and pred.decision["met"]
    assert pred.decision["probability"] == pytest.approx(pc)
    set_operating_points(copy, points, "balanced")
    pred = load_model(copy).predict(xray_png)
    assert pred.label != "covid" and pred.decision["point"] == "balanced"
    assert f"p(covid) = {pc:.3f} < threshold" in pred.decision["explanation"]


def test_evaluate_keeps_points_chosen_elsewhere(tiny_bundle: Path, tmp_path: Path) -> None:
    """Points stored with set_operating_points (e.g. on pooled leave-one-source-out predictions) survive an
    evaluation with validation rows; they are applied instead of being replaced by val-chosen ones."""
    from covidxray.data.manifest import read_manifest
    from covidxray.evaluation.evaluate import EvaluationOptions, evaluate
    from test_evaluation_end_to_end import write_manifest

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    y, p = _scores()
    set_operating_points(
        copy, choose_operating_points(y, p, description="pooled LOSO", n_resamples=50), "balanced"
    )
    before = (copy / "config.json").read_text()
    (tmp_path / "data").mkdir()
    df = read_manifest(write_manifest(tmp_path / "data"))
    opts = EvaluationOptions(n_resamples=50, probe=False)
    result = evaluate(copy, df, tmp_path / "eval", tmp_path / "cache", opts)
    ops = result["operating_points"]
    assert ops["source"] == "stored in the bundle" and ops["decision"] == "balanced"
    assert "pooled LOSO" in ops["kept"] and ops["points"]["balanced"]["decides"]
    assert (copy / "config.json").read_text() == before
