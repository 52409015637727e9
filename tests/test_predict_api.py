"""The Python API (`covidxray.load_model`), Grad-CAM overlays, and real images end to end."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import covidxray
from conftest import xray_like
from covidxray.cli import main
from covidxray.prediction.inputs import UnsupportedInput
from test_predict_bad_input import make_dicom


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path):
    return covidxray.load_model(tiny_bundle)


def test_every_input_kind_gives_the_same_prediction(predictor, tmp_path):
    a = xray_like(160)
    path = tmp_path / "x.png"
    Image.fromarray(a).save(path)
    preds = [predictor.predict(x) for x in (path, str(path), path.read_bytes(), a, Image.fromarray(a))]
    assert preds[0].path == str(path) and preds[2].path is None
    for p in preds[1:]:
        assert p.label == preds[0].label
        assert p.probabilities == pytest.approx(preds[0].probabilities, abs=1e-6)
    assert sum(preds[0].probabilities.values()) == pytest.approx(1, abs=1e-5)
    with pytest.raises(UnsupportedInput):
        predictor.predict(42)


def test_16_bit_png_and_dicom_are_predicted(predictor, tmp_path):
    a16 = xray_like(160).astype(np.uint16) * 257
    Image.fromarray(a16).save(tmp_path / "x16.png")
    make_dicom(tmp_path / "x.dcm", pixels=xray_like(96).astype(np.uint16) * 16)
    p16, pdcm = predictor.predict_batch([tmp_path / "x16.png", tmp_path / "x.dcm"])
    ref = predictor.predict(xray_like(160))
    assert p16.ok and pdcm.ok and pdcm.label is not None
    assert p16.probabilities == pytest.approx(ref.probabilities, abs=1e-3)


def test_info_describes_the_model(predictor):
    info = predictor.info()
    assert info["classes"] == ["covid", "normal", "pneumonia"]
    assert info["architecture"] == "seed_cnn2" and info["backend"] == "torch"
    assert info["version"].startswith("seed_cnn2@") and info["decision_rule"] == "the most probable class"
    assert info["not_for_clinical_use"] == covidxray.NOT_FOR_CLINICAL_USE


def test_explain_returns_an_overlay_png(predictor, xray_png):
    png = predictor.explain(xray_png)
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.mode == "RGB" and im.width == 512 and im.height > 512
    pixels = np.asarray(im)[:512]
    assert np.abs(pixels[..., 0].astype(int) - pixels[..., 2]).mean() > 5  # the heatmap added colour


def test_cli_explain_writes_one_overlay_per_image(tiny_bundle, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    for sub in ("a", "b"):  # same file name twice: two overlays, not one overwritten
        Image.fromarray(xray_like(160)).save(src / sub / "chest.png")
    out = tmp_path / "cams"
    args = [
        "predict",
        "--images",
        str(src),
        "--model",
        str(tiny_bundle),
        "--explain",
        str(out),
        "--out",
        str(tmp_path / "p.csv"),
    ]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["chest_gradcam-2.png", "chest_gradcam.png"]


def test_real_images_end_to_end(data_root, tiny_bundle, tmp_path, capsys):
    picks = [
        *sorted((data_root / "chest_xray" / "test" / "PNEUMONIA").glob("*.jpeg"))[:3],
        *sorted((data_root / "COVID-19_Radiography_Dataset" / "COVID").glob("*.png"))[:3],
        *sorted((data_root / "covid-chestxray-dataset" / "images").glob("*.jp*g"))[:2],
    ]
    assert len(picks) == 8
    folder = tmp_path / "real"
    folder.mkdir()
    for p in picks:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "preds.csv"
    assert main(["predict", "--images", str(folder), "--model", str(tiny_bundle), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and all(r["label"] and not r["error"] for r in rows)
    assert "8 images: 8 predicted" in capsys.readouterr().err
    assert main(["predict", "--image", str(picks[0]), "--model", str(tiny_bundle), "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["label"] == rows[[Path(r["path"]).name for r in rows].index(picks[0].name)]["label"]
