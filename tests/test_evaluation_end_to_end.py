"""``covidxray evaluate`` and ``covidxray compare`` end to end: a real saved model, a tiny manifest of made images."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import xray_like
from covidxray import NOT_FOR_CLINICAL_USE
from covidxray.bundle import read_config
from covidxray.cli import main
from covidxray.data.manifest import COLUMNS, read_manifest
from covidxray.evaluation.compare import HEADLINE_COLUMNS
from covidxray.evaluation.evaluate import task_rows

# (source, label, split, patients): 'alpha' holds every covid image, 'beta' every normal one.
LAYOUT = [
    ("alpha", "covid", "val", 3), ("alpha", "covid", "test", 4), ("alpha", "pneumonia", "val", 2),
    ("alpha", "pneumonia", "test", 3), ("beta", "normal", "val", 3), ("beta", "normal", "test", 4),
    ("beta", "pneumonia", "val", 2), ("beta", "pneumonia", "test", 3),
]  # fmt: skip


def write_manifest(root: Path, layout: list | None = None, images_per_patient: int = 2) -> Path:
    """PNG files under ``root`` and a manifest CSV listing them (``layout`` rows: source, label, split, patients)."""
    rows, n = [], 0
    for source, label, split, patients in layout or LAYOUT:
        for p in range(patients):
            for i in range(images_per_patient):
                rel = f"{source}/{label}/{split}-{p}-{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(xray_like(72, seed=n)).save(root / rel)
                n += 1
                sha1 = hashlib.sha1((root / rel).read_bytes()).hexdigest()
                rows.append({
                    "image_id": f"{source}:{rel}", "path": rel, "label": label, "finding": label,
                    "patient_id": f"{source}:{label}{split}{p}", "source": source, "view": "PA",
                    "modality": "X-ray", "width": 72, "height": 72, "format": "PNG", "sha1": sha1,
                    "dup_group": n, "split": split,
                })  # fmt: skip
    df = pd.DataFrame(rows).reindex(columns=list(COLUMNS)).astype(object).fillna("")
    path = root / "manifest.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("data"))


def copy_run(bundle: Path, run_dir: Path, run_json: dict | None = None) -> Path:
    """A run folder holding a copy of ``bundle`` (the session bundle must not be changed by a test)."""
    shutil.copytree(bundle, run_dir / "model")
    if run_json is not None:
        (run_dir / "run.json").write_text(json.dumps(run_json))
    return run_dir


def test_task_rows_map_and_drop_labels(manifest):
    df = read_manifest(manifest)
    binary, dropped = task_rows(df, ["covid", "normal"], "test")
    assert set(binary["label"]) == {"covid", "normal"} and dropped == {"pneumonia": 12}
    assert len(binary) == 16 and binary.attrs["root"] == df.attrs["root"]
    rest, dropped = task_rows(df, ["covid", "rest"], "all")
    assert dropped == {} and (rest["label"] == "rest").sum() == 2 * (2 + 3 + 3 + 4 + 2 + 3)


def test_evaluate_command_end_to_end(tiny_bundle, manifest, tmp_path, capsys):
    run = copy_run(tiny_bundle, tmp_path / "run")
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(run), "--manifest", str(manifest), "--split", "test", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "100"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["overall"]
    assert metrics["data"]["n_images"] == 28 and overall["n_patients"] == 14
    assert set(metrics["per_source"]) == {"alpha", "beta"}
    assert overall["accuracy"]["ci"][0] <= overall["accuracy"]["value"] <= overall["accuracy"]["ci"][1]
    assert sum(map(sum, overall["confusion_matrix"]["rows_true_columns_predicted"])) == 28
    assert any("'covid'" in w and "'alpha'" in w for w in metrics["warnings"])
    assert any("'normal'" in w and "'beta'" in w for w in metrics["warnings"])
    assert (
        metrics["probe"]["chance"] == pytest.approx(0.5) and metrics["probe"]["balanced_accuracy"] is not None
    )
    # operating point chosen on val, reported on test, stored in the bundle for the predictor
    op = read_config(run / "model").operating_point
    assert op["class"] == "covid" and op["threshold"] == pytest.approx(
        metrics["operating_point"]["threshold"]
    )
    assert metrics["operating_point"]["chosen_on"]["sensitivity"] >= 0.95
    # where the model looks: in-lung Grad-CAM share per source and per class, in metrics and report
    att = metrics["lung_attention"]
    assert att["sampled"]["n_images"] == 28 and set(att["per_source"]) == {"alpha", "beta"}
    assert 0.0 <= att["overall"]["in_lung_share"] <= 1.0 and 0.0 < att["overall"]["lung_area"] < 1.0
    assert set(att["per_class"]) <= {"covid", "normal", "pneumonia"} and att["per_class"]
    assert "Where the model looks: Grad-CAM inside the lung fields" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 9 and NOT_FOR_CLINICAL_USE in page
    assert (out / "report.md").read_text().splitlines()[2] == f"> **{NOT_FOR_CLINICAL_USE}**"
    assert "macro AUC" in printed and "screening  p >= " in printed and "<- decides" in printed
    assert str(out / "report.html") in printed and NOT_FOR_CLINICAL_USE in printed


def test_evaluate_refuses_a_missing_model(manifest, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path), "--manifest", str(manifest)]) == 5
    assert "no model here" in capsys.readouterr().err


def test_compare_two_runs(tiny_bundle, manifest, tmp_path):
    first = copy_run(
        tiny_bundle, tmp_path / "first", {"train_seconds": 125.0, "epochs_run": 3, "best_epoch": 2}
    )
    second = copy_run(tiny_bundle, tmp_path / "second")
    out = tmp_path / "comparison"
    argv = ["compare", str(first), str(second), "--out", str(out), "--manifest", str(manifest),
            "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "50", "--no-probe"]  # fmt: skip
    assert main(argv) == 0
    assert (first / "evaluation" / "metrics.json").is_file()  # evaluated because it was missing
    result = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in result["runs"]] == ["first", "second"]
    assert result["runs"][0]["train_seconds"] == 125.0 and result["runs"][1]["train_seconds"] is None
    assert all(r["images_per_second"] > 0 for r in result["runs"]) and result["warnings"] == []
    params = result["runs"][0]["parameters"]
    assert params == result["runs"][1]["parameters"] and params > 1000
    md = (out / "comparison.md").read_text()
    assert "2 min 05 s" in md and f"{params:,}" in md
    accuracy = next(line for line in md.splitlines() if line.startswith("| accuracy |"))
    assert len(re.findall(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", accuracy)) == 2
    in_lungs = next(line for line in md.splitlines() if line.startswith("| Grad-CAM in lungs (share) |"))
    assert len(re.findall(r"\| \d\.\d{3} ", in_lungs + " ")) == 2  # measured for both runs
    lines = md.splitlines()
    header = lines.index("| " + " | ".join(HEADLINE_COLUMNS) + " |")  # BENCHMARKS.md's comparison columns
    first_row = lines[header + 2].split(" | ")
    assert (
        first_row[0] == "| first" and first_row[3] == "2 min 05 s" and len(first_row) == len(HEADLINE_COLUMNS)
    )
    assert NOT_FOR_CLINICAL_USE in (out / "comparison.html").read_text()


def test_task_rows_keep_positions_for_the_cache(manifest):
    df = read_manifest(manifest)
    rows, _ = task_rows(df, ["covid", "normal", "pneumonia"], "val")
    positions = df.index.get_indexer(rows.index)
    assert np.array_equal(df["path"].to_numpy()[positions], rows["path"].to_numpy())


# 'kermany' is a pediatric collection (covidxray.data.population): its images, their copies elsewhere and anyone
# under 18 are children; the evaluation reports the rest apart as adults.
CHILD_LAYOUT = [
    ("alpha", "covid", "val", 3), ("alpha", "covid", "test", 5), ("alpha", "normal", "val", 2),
    ("alpha", "normal", "test", 4), ("kermany", "normal", "val", 2), ("kermany", "normal", "test", 3),
    ("kermany", "pneumonia", "val", 2), ("kermany", "pneumonia", "test", 3),
]  # fmt: skip


def test_children_rule_sources_copies_and_age():
    from covidxray.data.population import children

    df = pd.DataFrame({
        "source": ["kermany", "radiography", "radiography", "cohen", "cohen", "cohen"],
        "dup_group": [7, 7, 8, 9, 10, 11],
        "age": [np.nan, np.nan, np.nan, 12.0, 45.0, np.nan],
    })  # fmt: skip
    assert children(df).tolist() == [True, True, False, True, False, False]
    assert children(df, by_age=False).tolist() == [True, True, False, False, False, False]
    no_columns = df[["source"]]
    assert children(no_columns).tolist() == [True, False, False, False, False, False]
    # -1 (or empty) means no group: ungrouped images are not copies of an ungrouped child
    ungrouped = pd.DataFrame(
        {"source": ["kermany", "alpha", "alpha", "kermany"], "dup_group": [-1, -1, "", 2]}
    )
    assert children(ungrouped).tolist() == [True, False, False, True]


def test_adults_section_applies_each_point_to_its_own_class():
    from covidxray.evaluation.evaluate import EvaluationOptions, adults_section

    df = pd.DataFrame(
        {"source": ["kermany", "alpha", "alpha", "alpha", "alpha"], "dup_group": [0, 1, 2, 3, 4]}
    )
    df.index = [10, 11, 12, 13, 14]  # labels, not positions
    test_df = df.loc[[14, 10, 12, 11, 13]]
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])  # normal, pneumonia
    test = {
        "labels": np.array(["pneumonia", "normal", "normal", "pneumonia", "normal"]),
        "probs": probs,
        "patient_ids": np.array(["e", "a", "c", "b", "d"]),
        "sources": test_df["source"].to_numpy(),
    }
    ops = {
        "points": {
            "balanced": {"threshold": 0.5, "class": "pneumonia", "decides": True, "rule": "r"},
            "other": {"reason": "the model has no class 'covid'"},
        }
    }
    o = EvaluationOptions(n_resamples=20)
    section = adults_section(df, test_df, test, ["normal", "pneumonia"], ops, o)
    assert section["children_left_out"] == {"kermany": 1} and section["n_images"] == 4
    (point,) = section["points"].values()  # the point without a threshold is left out
    # adults: pneumonia p 0.8 (pos), 0.4 (neg), 0.7 (pos), 0.2 (neg) -> at 0.5 both positives found, no false alarm
    assert point["sensitivity"]["value"] == 1.0 and point["specificity"]["value"] == 1.0 and point["decides"]
    assert point["n_images"] == 4 and point["n_positive"] == 2


def test_evaluate_reports_adults_apart(tiny_bundle, tmp_path, capsys):
    from covidxray.evaluation.evaluate import EvaluationOptions, evaluate

    path = write_manifest(tmp_path / "data", CHILD_LAYOUT)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    test = df["split"] == "test"
    kid = df.index[test & (df["source"] == "kermany")][0]
    copy, young = df.index[test & (df["source"] == "alpha") & (df["label"] == "normal")][:2]
    df.loc[copy, "dup_group"] = df.loc[kid, "dup_group"]  # an alpha normal that is a re-encoded Kermany child
    young_covid = df.index[test & (df["label"] == "covid")][0]
    df.loc[young_covid, "age"] = "12"
    df.loc[young, "age"] = "40"
    df.to_csv(path, index=False)
    run = copy_run(tiny_bundle, tmp_path / "run")
    argv = ["evaluate", "--model", str(run), "--manifest", str(path), "--split", "test",
            "--out", str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "50",
            "--no-probe"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    adults = metrics["adults"]
    # test rows: alpha 10 covid + 8 normal, kermany 12; children: kermany 12, the copy and the 12-year-old
    assert adults["children_left_out"] == {"alpha": 2, "kermany": 12}
    assert adults["n_images"] == adults["group"]["n_images"] == 16
    assert adults["group"]["label_counts"] == {"covid": 9, "normal": 7, "pneumonia": 0}
    assert [n for n, r in adults["points"].items() if r["decides"]] == [
        metrics["operating_points"]["decision"]
    ]
    assert "## Adults only" in (tmp_path / "eval" / "report.md").read_text()
    assert "adults only (16 images; children left out: alpha 2, kermany 12): covid ROC AUC" in printed
    # the same figures as an evaluation of the adult rows alone
    m = read_manifest(path)
    adult_rows = pd.Series([i not in (kid, copy, young_covid) for i in range(len(m))], index=m.index)
    adult_rows &= m["source"] != "kermany"
    alone = evaluate(
        run / "model", m, tmp_path / "alone", tmp_path / "cache",
        EvaluationOptions(n_resamples=50, probe=False, lung_attention=0, store_operating_point=False),
        rows=adult_rows,
    )  # fmt: skip
    assert "adults" not in alone  # no child among the evaluated rows: nothing to separate
    for name, r in adults[
        "points"
    ].items():  # the same points (chosen on the same val rows) on the same adults
        same = alone["operating_points"]["points"][name]
        assert r["n_images"] == 16 and r["threshold"] == same["threshold"]
        assert (r["sensitivity"], r["specificity"]) == (same["sensitivity"], same["specificity"])
    # the copy is a child even when its Kermany twin is not among the evaluated rows (crossval's held-out source)
    only_alpha = evaluate(
        run / "model", m, tmp_path / "only_alpha", tmp_path / "cache",
        EvaluationOptions(split="all", n_resamples=50, probe=False, lung_attention=0, store_operating_point=False),
        rows=m["source"] == "alpha",
    )  # fmt: skip
    assert only_alpha["adults"]["children_left_out"] == {"alpha": 2}
    assert only_alpha["adults"]["n_images"] == only_alpha["overall"]["n_images"] - 2
    assert (
        alone["overall"]["per_class"]["covid"]["roc_auc"] == adults["group"]["per_class"]["covid"]["roc_auc"]
    )
