"""The printed summary and the task label rule shared by training and evaluation."""

import numpy as np
import pandas as pd
import pytest

from covidxray.data.tasks import task_labels
from covidxray.evaluation.document import fmt
from covidxray.evaluation.metrics_json import EvaluationOptions, evaluate_predictions
from covidxray.evaluation.terminal_summary import summary_lines

CLASSES = ["covid", "normal", "pneumonia"]


def _metrics(with_features: bool = True) -> dict:
    rng = np.random.default_rng(0)
    labels = np.array(["covid", "normal", "pneumonia"] * 20)
    sources = np.array(["a", "b"] * 30)
    patients = np.array([f"p{i // 2}" for i in range(60)])
    y = np.array([CLASSES.index(lab) for lab in labels])
    logits = rng.normal(size=(60, 3))
    logits[np.arange(60), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    features = rng.normal(size=(60, 4)) if with_features else None
    return evaluate_predictions(
        labels, probs, CLASSES, patients, sources, features, EvaluationOptions(n_resamples=100)
    )


def test_summary_lines_show_metrics_with_intervals():
    m = _metrics()
    m["operating_point"] = {"reason": "no 'val' rows in the manifest to choose the threshold on"}
    m["report"] = {"html": "/x/report.html", "markdown": "/x/report.md"}
    lines = summary_lines(m)
    text = "\n".join(lines)
    acc = m["overall"]["accuracy"]
    assert next(line for line in lines if line.strip().startswith("accuracy")).endswith(
        fmt(acc["value"], acc["ci"])
    )
    for cls in CLASSES:
        row = next(line for line in lines if line.strip().startswith(cls))
        auc = m["overall"]["per_class"][cls]["roc_auc"]
        assert fmt(auc["value"], auc["ci"]) in row
    assert "operating point: none (no 'val' rows" in text
    assert f"chance {fmt(0.5)}" in text and "label-only baseline" in text
    assert "/x/report.html" in lines[-1]


def test_summary_lines_without_probe_or_report():
    lines = summary_lines(_metrics(with_features=False))
    assert "shortcut probe: not run" in lines and not any(line.startswith("report:") for line in lines)


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (["covid", "normal", "pneumonia"], ["covid", "normal", "pneumonia", None, None]),
        (["covid", "rest"], ["covid", "rest", "rest", None, None]),
        (["covid", "normal"], ["covid", "normal", None, None, None]),
        (["normal", "pneumonia"], [None, "normal", "pneumonia", None, None]),
    ],
)
def test_task_labels(classes, expected):
    labels = pd.Series(["covid", "normal", "pneumonia", "", None], index=[10, 11, 12, 13, 14])
    mapped = task_labels(labels, classes)
    assert list(mapped.index) == [10, 11, 12, 13, 14]
    assert [None if pd.isna(v) else v for v in mapped] == expected


def test_task_labels_rejects_a_one_class_task():
    with pytest.raises(ValueError, match="two distinct"):
        task_labels(pd.Series(["covid"]), ["covid"])
