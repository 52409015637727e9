"""The input guard's view check (frontal or lateral?): the shipped network, its warning, the predictor's use of
it on real lateral and frontal X-rays, and the tool that trains it (on a small real subset)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import xray_like
from covidxray.imageio import load_image
from covidxray.prediction.guard import InputGuard
from covidxray.viewcheck import (
    DEFAULT_DIR,
    VIEW_SIZE,
    ViewCheck,
    ViewCheckLoadError,
    ViewFacts,
    default_view_check,
    view_input,
)

ROOT = Path(__file__).resolve().parents[1]


def test_view_input_is_an_equalised_64px_thumbnail() -> None:
    x = view_input(np.linspace(0, 1, 300 * 200, dtype=np.float32).reshape(300, 200) ** 3)
    assert x.shape == (VIEW_SIZE, VIEW_SIZE) and x.dtype == np.float32
    assert 0.0 <= x.min() < 0.05 and 0.95 < x.max() <= 1.0
    assert abs(float(x.mean()) - 0.5) < 0.05  # equalised: a flat histogram whatever the input's curve
    with pytest.raises(ValueError, match="2-D grayscale image"):
        view_input(np.zeros((8, 8, 3), np.float32))


def test_shipped_view_check_loads_and_gives_probabilities() -> None:
    check = default_view_check(threads=1)
    config = json.loads((DEFAULT_DIR / "config.json").read_text())
    assert check.config == config and check.threshold == config["threshold"]
    assert check.version.startswith("view-cnn@")
    images = [xray_like(128, seed=i).astype(np.float32) / 255 for i in range(3)]
    p = check.lateral_probability(images)
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))
    assert np.allclose([check.lateral_probability([im])[0] for im in images], p, atol=1e-6)
    assert check.lateral_probability([]).shape == (0,)
    facts = check.facts(images)
    assert [f.lateral for f in facts] == [bool(q >= check.threshold) for q in p]
    assert config["cv"]["grouped_by"] == "patient" and config["cv"]["auc"] > 0.9


def test_view_check_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(ViewCheckLoadError, match="no view check here"):
        ViewCheck(tmp_path)
    seg = ROOT / "src" / "covidxray" / "default_segmenter" / "model.onnx"
    with pytest.raises(ViewCheckLoadError, match="not a covidxray view check"):
        ViewCheck(seg)


def test_guard_warns_on_a_lateral_view_with_the_numbers() -> None:
    from covidxray.imageio import LoadedImage

    img = LoadedImage(xray_like(256).astype(np.float32) / 255, "png", 8, "L")
    guard = InputGuard()
    assert not any("lateral" in w for w in guard.check(img, view=ViewFacts(0.79, 0.8, False)))
    (warning,) = [w for w in guard.check(img, view=ViewFacts(0.93, 0.8, True)) if "lateral" in w]
    assert "looks like a lateral view (p(lateral) 0.93 >= 0.80)" in warning and "frontal" in warning


def _laterals(data_root: Path, n: int) -> list[Path]:
    with open(data_root / "covid-chestxray-dataset" / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["view"] == "L"]
    paths = [data_root / "covid-chestxray-dataset" / "images" / r["filename"] for r in rows]
    return [p for p in paths if p.is_file()][:n]


def test_predictor_flags_real_lateral_views_and_not_jsrt_frontals(data_root: Path) -> None:
    """The shipped check on real images. The laterals were in its training set (all the lateral views at hand
    are); its held-out figures are the patient-grouped cross-validation in its config. JSRT was never in it."""
    import covidxray

    predictor = covidxray.load_model(None, backend="onnx")
    laterals = _laterals(data_root, 12)
    jsrt = sorted((data_root / "JSRT" / "images").glob("JPCNN*.png"))[:12]
    lat = predictor.predict_batch([str(p) for p in laterals])
    front = predictor.predict_batch([str(p) for p in jsrt])
    assert sum(any("looks like a lateral view" in w for w in r.warnings) for r in lat) >= 10
    assert not any("looks like a lateral view" in w for r in front for w in r.warnings)
    # the predictor judges the pixels the training tool read: load_image's, through view_input
    (facts,) = predictor.check_views([load_image(laterals[0])])
    expected = default_view_check().lateral_probability([load_image(laterals[0]).pixels])[0]
    assert facts.lateral_probability == round(float(expected), 4)
    predictor.lung_check = False  # the view check runs with the lung check
    quiet = predictor.predict_batch([str(laterals[0])])
    assert not any("looks like a lateral view" in w for w in quiet[0].warnings)
    assert predictor.info()["view_check"]["version"] == default_view_check().version
    assert predictor.info()["view_check"]["threshold"] == default_view_check().threshold


def test_train_view_check_tool_on_a_small_real_subset(data_root: Path, tmp_path: Path) -> None:
    # the tool reads the manifest's source, path and patient_id columns (a `covidxray data build` manifest)
    rows = [
        ("radiography", str(p.relative_to(data_root)))
        for p in sorted((data_root / "COVID-19_Radiography_Dataset" / "Normal").glob("*.png"))[:30]
    ]
    rows += [("kermany", str(p.relative_to(data_root)))
             for p in sorted((data_root / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[:30]]  # fmt: skip
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {"source": [s for s, _ in rows], "path": [p for _, p in rows], "patient_id": [p for _, p in rows]}
    ).to_csv(manifest, index=False)
    out = tmp_path / "view"
    args = ["--root", str(data_root), "--manifest", str(manifest), "--jsrt", "", "--out", str(out),
            "--negatives", "20", "--steps", "40", "--folds", "2"]  # fmt: skip
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_view_check.py"), *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["lateral"] == len(_laterals(data_root, 10_000))
    assert config["data"]["frontal"]["radiography"] == 20 and config["data"]["frontal"]["kermany"] == 20
    assert set(config["cv"]["at"]) == {"0.5", "0.8", "0.9", "0.95"}
    check = ViewCheck(out, threads=1)
    assert check.version == config["version"] and check.threshold == 0.8
    p = check.lateral_probability([load_image(_laterals(data_root, 1)[0]).pixels])
    assert p.shape == (1,) and 0 <= p[0] <= 1
