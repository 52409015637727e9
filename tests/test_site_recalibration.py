"""Bring your own hospital, end to end on real images: a site folder found without flags, the shipped model
evaluated there at its stored operating points, and ``covidxray recalibrate`` writing a bundle + ONNX that agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import xray_like
from covidxray.cli import main
from covidxray.data.sources import find_sources
from covidxray.data.sources.folder import detect, read_patient_ids, resolve_label


@pytest.mark.parametrize(
    ("folder", "label"),
    [("covid", "covid"), ("COVID-19", "covid"), ("COVID", "covid"), ("normal", "normal"), ("NORMAL", "normal"),
     ("Normal", "normal"), ("pneumonia", "pneumonia"), ("PNEUMONIA", "pneumonia"),
     ("Viral Pneumonia", "pneumonia"), ("Lung_Opacity", "pneumonia"), ("lung opacity", "pneumonia")],
)  # fmt: skip
def test_class_folder_synonyms(folder: str, label: str) -> None:
    assert resolve_label(folder)[0] == label


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(xray_like(64, seed=seed)).save(path)


def test_site_with_one_class_folder_is_found_without_flags(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "site" / "hospitalA" / "NORMAL" / f"{i}.png", i)
    (tmp_path / "other" / "notes").mkdir(parents=True)
    assert detect(tmp_path / "site" / "hospitalA") and not detect(tmp_path / "other")
    (found,) = find_sources(tmp_path / "site")
    assert (found.name, found.layout) == ("hospitalA", "folder")
    (found,) = find_sources(tmp_path / "site" / "hospitalA")  # the class folders' parent itself
    assert found.layout == "folder"


def test_patient_ids_from_a_csv_beside_the_images(tmp_path: Path) -> None:
    site = tmp_path / "hospitalB"
    for i in range(4):
        _png(site / "COVID-19" / f"{i}.png", i)
    (site / "patients.csv").write_text("file,Patient ID\nCOVID-19/0.png,p1\n1.png,p1\n2.png,p2\n")
    assert read_patient_ids(site) == {"COVID-19/0.png": "p1", "1.png": "p1", "2.png": "p2"}
    from covidxray.data.sources.folder import scan

    ids = {c.path.name: (c.patient_id, c.patient_known) for c in scan(site, "hospitalB").candidates}
    assert ids["0.png"] == ids["1.png"] == ("hospitalB:p1", True)
    assert ids["3.png"] == ("hospitalB:COVID-19/3", False)


# -- real images: JSRT adults (never seen by the shipped model) + held-out COVID-19 images --------------------
@pytest.fixture(scope="module")
def site_manifest(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder of real images (symlinks): 24 JSRT normals + 24 Radiography COVID-19, split 50/0/50."""
    jsrt = sorted((data_root / "JSRT" / "images").glob("*.png"))
    covid = sorted((data_root / "COVID-19_Radiography_Dataset" / "COVID").glob("*.png"))
    if len(jsrt) < 24 or len(covid) < 24:
        pytest.skip("JSRT or Radiography COVID images not found")
    tmp = tmp_path_factory.mktemp("site")
    site = tmp / "sites" / "hospitalA"
    for sub, files in (("Normal", jsrt[::10][:24]), ("COVID-19", covid[-24:])):
        (site / sub).mkdir(parents=True)
        for f in files:
            (site / sub / f.name).symlink_to(f)
    out = tmp / "manifest.csv"
    argv = ["data", "build", "--root", str(tmp / "sites"), "--out", str(out), "--fractions", "0.5", "0", "0.5",
            "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_evaluate_without_model_applies_the_stored_operating_points(site_manifest, tmp_path, capsys):
    from covidxray.bundle import DEFAULT_MODEL_DIR, read_config

    before = (DEFAULT_MODEL_DIR / "config.json").read_bytes()
    out = tmp_path / "eval"
    argv = ["evaluate", "--manifest", str(site_manifest), "--split", "test", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "100", "--no-probe"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    ops = metrics["operating_points"]
    shipped = read_config(DEFAULT_MODEL_DIR)
    assert ops["source"] == "stored in the bundle" and ops["decision"] == shipped.decision
    deciding = ops["points"][shipped.decision]
    assert deciding["decides"] and deciding["threshold"] == pytest.approx(
        shipped.operating_point["threshold"]
    )
    assert deciding["n_images"] == metrics["data"]["n_images"] and deciding["specificity"]["ci"] is not None
    assert "<- decides" in printed and "Decision at each operating point" in (out / "report.md").read_text()
    assert (DEFAULT_MODEL_DIR / "config.json").read_bytes() == before  # the shipped model is never rewritten


def test_recalibrate_writes_a_bundle_whose_torch_and_onnx_decisions_agree(site_manifest, tmp_path, capsys):
    import pandas as pd

    from covidxray import load_model
    from covidxray.bundle import DEFAULT_MODEL_DIR, read_config

    out = tmp_path / "hospitalA-model"
    argv = ["recalibrate", "--manifest", str(site_manifest), "--split", "train", "--out", str(out),
            "--target-specificity", "0.9", "--temperature", "--cache-dir", str(tmp_path / "cache"),
            "--bootstrap", "100", "--curve-sizes", "10", "20"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "decision: site" in printed and "after" in printed
    cfg = json.loads((out / "config.json").read_text())
    prov = cfg["recalibration"]
    df = pd.read_csv(site_manifest)
    n_train = int((df["split"] == "train").sum())
    assert prov["site"] == "hospitalA" and prov["split"] == "train" and prov["n_images"] == n_train
    assert prov["parent"]["version"].startswith(cfg["architecture"]["name"] + "@")
    assert cfg["decision"] == "site" and cfg["operating_points"]["site"]["rule"] == "specificity>=0.9"
    assert len(cfg["operating_points"]["site"]["threshold_ci"]) == 2
    assert cfg["operating_points"]["site"]["chosen_on"]["n_images"] == n_train
    report = (out / "recalibration.md").read_text()
    parent_decision = read_config(DEFAULT_MODEL_DIR).decision  # the shipped model's deciding point
    assert f"| before | {parent_decision} |" in report and "| after | site |" in report
    assert "How many site images" in report and (out / "figures" / "site_curve.png").stat().st_size > 1000

    torch_model, onnx_model = load_model(out), load_model(out, backend="onnx")
    assert onnx_model.decision == "site" and onnx_model.operating_point["threshold"] == pytest.approx(
        cfg["operating_points"]["site"]["threshold"]
    )
    root = Path(json.loads(Path(str(site_manifest) + ".json").read_text())["root"])
    images = [root / p for p in df.loc[df["split"] == "test", "path"]]
    a, b = torch_model.predict_batch(images), onnx_model.predict_batch(images)
    assert [p.label for p in a] == [p.label for p in b]
    assert all(p.decision["point"] == "site" for p in a + b)
    np.testing.assert_allclose(
        [p.probabilities["covid"] for p in a], [p.probabilities["covid"] for p in b], atol=1e-4
    )
    # temperature scaling folded into the last layer: the parent's probabilities at temperature T, exactly
    from covidxray.prediction.recalibrate import apply_temperature

    t = prov["temperature"]
    assert t > 0 and "divided by T" in prov["weights"]
    parent = np.array([list(p.probabilities.values()) for p in load_model().predict_batch(images[:5])])
    new = np.array([list(p.probabilities.values()) for p in a[:5]])
    np.testing.assert_allclose(new, apply_temperature(parent, t), atol=1e-5)


def test_recalibrate_refuses_a_calibration_set_without_both_classes(site_manifest, tmp_path, capsys):
    import pandas as pd

    df = pd.read_csv(site_manifest)
    one_class = tmp_path / "normals.csv"
    df[df["label"] == "normal"].to_csv(one_class, index=False)
    Path(str(one_class) + ".json").write_text(Path(str(site_manifest) + ".json").read_text())
    argv = ["recalibrate", "--manifest", str(one_class), "--split", "train", "--out", str(tmp_path / "x"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "0 COVID-19" in err and "needs both" in err and "covid/" in err
    assert not (tmp_path / "x").exists()
