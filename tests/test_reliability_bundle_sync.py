"""A bundle and its ONNX export stay one model (#14 item 11), and a newer bundle is refused, not misread (item 12)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import covidxray
from covidxray.bundle import BundleError, config_digest, load_bundle, read_config
from covidxray.cli import main
from covidxray.data.manifest import read_manifest
from covidxray.prediction.backend import ModelLoadError
from covidxray.preprocess import NewerPreprocessingError, Preprocessing
from test_evaluation_end_to_end import write_manifest


def onnx_meta(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def labels(bundle: Path, backend: str, images: list[Path]) -> list[str]:
    return [p.label for p in covidxray.load_model(bundle, backend=backend).predict_batch(images)]


@pytest.fixture
def exported(tiny_bundle: Path, tmp_path: Path) -> Path:
    bundle = tmp_path / "run" / "model"
    shutil.copytree(tiny_bundle, bundle)
    assert main(["export", "--model", str(bundle)]) == 0
    return bundle


def test_evaluate_rewrites_the_operating_point_and_the_onnx_export_follows(exported, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data")
    before = onnx_meta(exported / "model.onnx")
    assert json.loads(before["operating_point"]) is None  # exported before any operating point existed
    argv = ["evaluate", "--model", str(exported.parent), "--manifest", str(manifest), "--split", "test",
            "--out", str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "20"]  # fmt: skip
    assert main(argv) == 0
    op = read_config(exported).operating_point
    assert op and op["threshold"] is not None
    after = onnx_meta(exported / "model.onnx")
    assert (
        json.loads(after["operating_point"]) == op
        and f"p(covid) >= {op['threshold']:.4g}" in after["decision_rule"]
    )
    on_disk = json.loads((exported / "config.json").read_text())
    assert (
        after["covidxray.config_sha256"]
        == config_digest(on_disk)
        == config_digest(json.loads(after["covidxray.config"]))
    )
    df = read_manifest(manifest)
    images = [Path(df.attrs["root"]) / p for p in df["path"]]
    onnx_pred = covidxray.load_model(exported / "model.onnx", backend="onnx")
    assert onnx_pred.operating_point == op
    torch_labels, onnx_labels = labels(exported, "torch", images), labels(exported, "onnx", images)
    assert torch_labels == onnx_labels
    # the threshold changes labels here, so the agreement is not the arg-max agreeing with itself
    probs = [p.probabilities for p in onnx_pred.predict_batch(images)]
    argmax = [max(p, key=p.get) for p in probs]
    assert argmax != onnx_labels


def test_a_config_changed_behind_the_export_is_refused_with_the_command_that_fixes_it(
    exported, tmp_path, capsys
):
    cfg = json.loads((exported / "config.json").read_text())
    point = {
        "class": "covid",
        "threshold": 0.01,
    }  # written by hand, or by a tool that does not refresh exports
    cfg.update(operating_points={"screening": point}, decision="screening", operating_point=point)
    (exported / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"stale.*operating_points.*covidxray export --model"):
        covidxray.load_model(exported, backend="onnx")
    image = tmp_path / "x.png"
    from PIL import Image

    from conftest import xray_like

    Image.fromarray(xray_like(96)).save(image)
    assert main(["predict", "--image", str(image), "--model", str(exported), "--backend", "onnx"]) == 5
    assert "covidxray export --model" in capsys.readouterr().err
    assert main(["export", "--model", str(exported)]) == 0
    cfg = json.loads((exported / "config.json").read_text())
    cfg["metrics"] = {"note": "informational keys do not make an export stale"}
    (exported / "config.json").write_text(json.dumps(cfg))
    pred = covidxray.load_model(exported, backend="onnx").predict(image)
    assert pred.covid_threshold == 0.01 and pred.label == "covid"


def test_unknown_preprocessing_settings_are_refused_not_dropped():
    d = Preprocessing().to_dict()
    assert Preprocessing.from_dict(d) == Preprocessing()
    with pytest.raises(NewerPreprocessingError, match=r"'clahe_clip'.*upgrade covidxray"):
        Preprocessing.from_dict({**d, "clahe_clip": 2.0})
    with pytest.raises(NewerPreprocessingError, match=r"resize='future_mode'.*upgrade covidxray"):
        Preprocessing.from_dict({**d, "resize": "future_mode"})


def test_a_newer_bundle_is_refused_by_every_loader(exported, xray_png, capsys):
    cfg = json.loads((exported / "config.json").read_text())
    cfg["preprocessing"]["clahe_clip"] = 2.0
    (exported / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        BundleError, match=r"config.json: format version 1: .*'clahe_clip'.*upgrade covidxray"
    ):
        load_bundle(exported)
    with pytest.raises(ModelLoadError, match="clahe_clip"):
        covidxray.load_model(exported)
    assert main(["predict", "--image", str(xray_png), "--model", str(exported)]) == 5
    assert "upgrade covidxray" in capsys.readouterr().err
    # an ONNX file written by that newer covidxray (its embedded config) is refused too
    from covidxray.bundle import refresh_onnx_metadata

    refresh_onnx_metadata(exported / "model.onnx", cfg)
    with pytest.raises(ModelLoadError, match=r"clahe_clip.*upgrade covidxray"):
        covidxray.load_model(exported / "model.onnx", backend="onnx")
