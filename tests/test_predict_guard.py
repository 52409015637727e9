"""The input guard: image statistics catch photos, documents and thumbnails; the feature distance catches the rest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import covidxray
from conftest import xray_like
from covidxray.cli import main
from covidxray.errors import EXIT_REFUSED
from covidxray.imageio import LoadedImage, load_image
from covidxray.prediction.guard import FeatureDistance, fit_guard, image_stats, stats_warnings


def gray(a: np.ndarray) -> LoadedImage:
    return LoadedImage(a.astype(np.float32) / 255.0, "array", 8, "L")


def document(size: int = 400) -> np.ndarray:
    img = Image.new("L", (size, int(size * 1.3)), 250)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    for i in range(30):
        draw.text(
            (20, 15 + i * 17), "Lorem ipsum dolor sit amet, consectetur adipiscing elit", fill=10, font=font
        )
    return np.asarray(img)


def test_xray_like_image_passes_the_statistics():
    assert stats_warnings(image_stats(gray(xray_like(256)))) == []


def test_document_tiny_and_strip_are_flagged():
    doc = " ".join(stats_warnings(image_stats(gray(document()))))
    assert "document" in doc or "sharp edges" in doc
    assert any("small image" in w for w in stats_warnings(image_stats(gray(xray_like(100)))))
    strip = np.tile(xray_like(200), (1, 3))
    assert any("unusual shape" in w for w in stats_warnings(image_stats(gray(strip))))


def test_colour_photo_is_flagged_through_the_loader(tmp_path):
    rgb = np.zeros((240, 240, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 40
    rgb[..., 1] = np.linspace(0, 255, 240)[None]
    Image.fromarray(rgb).save(tmp_path / "c.png")
    warnings = stats_warnings(image_stats(load_image(tmp_path / "c.png")))
    assert any(w.startswith("colour image") for w in warnings)


def test_feature_distance_flags_far_points_and_keeps_near_ones():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 64)) * np.linspace(3, 0.1, 64)
    fd = FeatureDistance.fit(train, quantile=0.99, components=16)
    new = rng.normal(size=(400, 64)) * np.linspace(3, 0.1, 64)
    assert (fd.distance(new) > fd.threshold).mean() < 0.05
    assert fd.distance(np.full(64, 8.0)) > fd.threshold
    again = FeatureDistance.from_dict(fd.to_dict())
    assert abs(again.distance(new[0]) - fd.distance(new[0])) < 1e-3


@pytest.fixture(scope="module")
def guarded(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with a guard fitted on 120 X-ray-like images (an iterable of arrays)."""
    from covidxray.preprocess import Preprocessing

    bundle = tmp_path_factory.mktemp("guarded") / "model"
    shutil.copytree(tiny_bundle, bundle)
    pre = Preprocessing(image_size=64)
    images = (pre.canonical(xray_like(160, seed=s).astype(np.float32) / 255) for s in range(120))
    guard = fit_guard(bundle, images, components=8)
    assert guard["feature_distance"]["fitted_on"] == 120
    return bundle


def test_fitted_guard_is_stored_and_flags_noise(guarded, tmp_path):
    from covidxray.bundle import read_config

    assert read_config(guarded).guard["feature_distance"]["method"] == "pca-mahalanobis"
    predictor = covidxray.load_model(guarded)
    assert predictor.info()["guard"]["feature_distance"]["threshold"] > 0
    noise = np.random.default_rng(5).integers(0, 256, (200, 200), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    Image.fromarray(xray_like(200, seed=999)).save(tmp_path / "xray.png")
    flagged = predictor.predict(tmp_path / "noise.png")
    assert any(w.startswith("unlike the training X-rays") for w in flagged.warnings)
    assert flagged.label is not None  # a warning does not change the prediction
    assert predictor.predict(tmp_path / "xray.png").warnings == []


def test_strict_refuses_an_out_of_distribution_image(guarded, tmp_path, capsys):
    Image.fromarray(document()).save(tmp_path / "letter.png")
    rc = main(["predict", "--image", str(tmp_path / "letter.png"), "--model", str(guarded), "--strict"])
    assert rc == EXIT_REFUSED
    assert "refused by the input guard" in capsys.readouterr().err


def test_guard_cli_fits_from_a_manifest_cache(guarded, tmp_path, capsys):
    import pandas as pd

    from covidxray.bundle import read_config
    from covidxray.data.manifest import COLUMNS

    bundle = tmp_path / "model"
    shutil.copytree(guarded, bundle)
    rows = []
    for i in range(40):
        name = f"img{i}.png"
        Image.fromarray(xray_like(128, seed=100 + i)).save(tmp_path / name)
        row = dict.fromkeys(COLUMNS, "")
        row.update(
            image_id=f"x{i}",
            path=name,
            label="normal",
            sha1=f"{i:040x}",
            split="train" if i < 30 else "val",
            width=128,
            height=128,
            age="",
            dup_group=i,
            patient_id=f"p{i}",
            source="test",
        )
        rows.append(row)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(tmp_path / "manifest.csv", index=False)
    args = [
        "guard",
        "--model",
        str(bundle),
        "--manifest",
        str(tmp_path / "manifest.csv"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0
    assert "fitted on 30 train images" in capsys.readouterr().out
    fd = read_config(bundle).guard["feature_distance"]
    assert (
        fd["fitted_on"] == 30
        and fd["threshold"] != read_config(guarded).guard["feature_distance"]["threshold"]
    )
