"""ONNX export: agreement with PyTorch, self-describing metadata, and an ONNX backend that never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import covidxray
from conftest import xray_like
from covidxray.cli import main


@pytest.fixture(scope="module")
def exported(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with an operating point, exported to model.onnx by the CLI."""
    from covidxray.bundle import update_bundle

    bundle = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(tiny_bundle, bundle)
    update_bundle(bundle, operating_point={"class": "covid", "threshold": 0.2, "target_sensitivity": 0.95})
    assert main(["export", "--model", str(bundle)]) == 0
    return bundle


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(5):
        paths.append(d / f"x{i}.png")
        Image.fromarray(xray_like(160 + 16 * i, seed=i)).save(paths[-1])
    return paths


def test_onnx_and_torch_probabilities_agree_to_1e4(exported, images):
    torch_pred = covidxray.load_model(exported, backend="torch")
    onnx_pred = covidxray.load_model(exported, backend="onnx")
    a = torch_pred.predict_batch(images, batch_size=3)  # two batches of different sizes: dynamic batch axis
    b = onnx_pred.predict_batch(images, batch_size=3)
    pa = np.array([[p.probabilities[c] for c in torch_pred.classes] for p in a])
    pb = np.array([[p.probabilities[c] for c in onnx_pred.classes] for p in b])
    assert pa.shape == (5, 3)
    np.testing.assert_allclose(pb, pa, atol=1e-4, rtol=0)
    assert [p.label for p in a] == [p.label for p in b]
    assert torch_pred.info()["version"] == onnx_pred.info()["version"]


def test_onnx_metadata_carries_preprocessing_classes_and_operating_point(exported):
    import onnx

    proto = onnx.load(str(exported / "model.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["covid", "normal", "pneumonia"]
    assert json.loads(meta["preprocessing"])["image_size"] == 64
    assert "histogram equalisation" in meta["preprocessing_description"]
    assert json.loads(meta["operating_point"])["threshold"] == 0.2
    assert (
        json.loads(meta["operating_points"])["screening"]["threshold"] == 0.2
        and meta["decision"] == "screening"
    )
    assert "p(covid) >= 0.2" in meta["decision_rule"] and "screening operating point" in meta["decision_rule"]
    assert meta["not_for_clinical_use"] == covidxray.NOT_FOR_CLINICAL_USE
    assert "guard" in json.loads(meta["covidxray.config"])
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # dynamic batch


def test_operating_point_decides_the_label(exported, images, capsys):
    pred = covidxray.load_model(exported / "model.onnx", backend="onnx").predict(images[0])
    p = pred.probabilities
    assert pred.covid_threshold == 0.2
    assert pred.label == ("covid" if p["covid"] >= 0.2 else max(("normal", "pneumonia"), key=p.get))
    assert main(["predict", "--image", str(images[0]), "--model", str(exported / "model.onnx")]) == 0
    out = capsys.readouterr().out
    assert "decision: covid when p(covid) >= 0.2" in out and "operating point" in out
    sign = ">=" if p["covid"] >= 0.2 else "<"
    assert f"decided by: {pred.label}" in out and f"p(covid) = {p['covid']:.3f} {sign} threshold 0.200" in out
    assert "(screening operating point, sensitivity>=0.95)" in out


def test_onnx_backend_runs_without_importing_torch(exported, images):
    code = (
        "import sys; from covidxray.cli import main; "
        f"rc = main(['predict', '--image', {str(images[0])!r}, '--model', {str(exported)!r}, "
        "'--backend', 'onnx', '--json']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', 'PANDAS' if 'pandas' in sys.modules else ''); "
        "sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("NO_TORCH")
    result = json.loads(res.stdout[: res.stdout.rindex("}") + 1])
    assert result["label"] in ("covid", "normal", "pneumonia")
    assert result["not_for_clinical_use"] == covidxray.NOT_FOR_CLINICAL_USE


def test_jsonl_batch_with_glob_and_onnx(exported, images, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    pattern = str(images[0].parent / "x*.png")
    args = ["predict", "--images", pattern, "--model", str(exported), "--backend", "onnx", "--out", str(out)]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == [p.name for p in images]
    assert all(abs(r["p_covid"] + r["p_normal"] + r["p_pneumonia"] - 1) < 1e-4 for r in rows)
    assert rows[0]["warnings"] == [] and rows[0]["error"] is None
    assert all(r["decided_by"] == "screening" and r["threshold"] == 0.2 for r in rows)
    assert "5 images: 5 predicted" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [1, 2])
def test_lung_segmenter_runs_with_the_predictors_own_threads(exported, images, threads):
    """A 1-thread predictor (what a 1-CPU Ray actor builds) segments with 1 thread too: before, the shipped
    segmenter always took 2 intra-op threads and oversubscribed the actor's core."""
    from covidxray.prediction.onnx_backend import OnnxBackend
    from covidxray.prediction.predictor import Predictor

    predictor = Predictor(OnnxBackend(exported / "model.onnx", threads=threads))
    assert predictor.predict_batch([str(p) for p in images[:2]])[0].lungs  # the lung check ran
    session = predictor._segmenter._run.session
    assert session.get_session_options().intra_op_num_threads == threads
