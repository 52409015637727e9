"""Test-time augmentation and small ensembles: the views, the averaging, both backends, the CLI and evaluation."""

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
from covidxray.bundle import ModelLoadError, read_config, update_bundle
from covidxray.cli import main
from covidxray.ensemble import EnsembleError, class_columns
from covidxray.imageio import load_image
from covidxray.preprocess import TTA_VIEWS, Preprocessing, mean_over_views


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("tta_imgs")
    paths = []
    for i in range(3):
        paths.append(d / f"x{i}.png")
        Image.fromarray(xray_like(150 + 20 * i, seed=10 + i)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def exported(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("tta_exported") / "model"
    shutil.copytree(tiny_bundle, bundle)
    assert main(["export", "--model", str(bundle)]) == 0
    return bundle


def _probs(preds, classes) -> np.ndarray:
    assert all(p.ok for p in preds), [p.error for p in preds]
    return np.array([[p.probabilities[c] for c in classes] for p in preds])


def test_views_are_fixed_shaped_and_start_with_the_identity():
    pre = Preprocessing(image_size=48, channels=3)
    canonical = np.stack([pre.canonical(xray_like(90, seed=s) / 255.0) for s in range(2)])
    x = pre.view_inputs(canonical, len(TTA_VIEWS))
    assert x.shape == (2 * len(TTA_VIEWS), 3, 48, 48) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x[:: len(TTA_VIEWS)], pre.to_input(canonical))  # view 0 of each image
    np.testing.assert_array_equal(x, pre.view_inputs(canonical, len(TTA_VIEWS)))  # deterministic
    views = x[: len(TTA_VIEWS)]
    assert all(np.abs(views[v] - views[0]).mean() > 1e-3 for v in range(1, len(TTA_VIEWS)))
    np.testing.assert_array_equal(views[TTA_VIEWS.index("hflip")], views[0][..., ::-1])
    np.testing.assert_allclose(views[TTA_VIEWS.index("gamma_0.8")], views[0] ** 0.8, rtol=1e-6)
    np.testing.assert_array_equal(pre.view_inputs(canonical, 1), pre.to_input(canonical))
    with pytest.raises(ValueError, match="from 1 to 8"):
        pre.view_inputs(canonical, 9)
    np.testing.assert_allclose(mean_over_views(np.arange(12.0).reshape(6, 2), 3), [[2, 3], [8, 9]])


def test_tta_changes_the_output_and_is_the_mean_of_the_views(tiny_bundle, images):
    plain = covidxray.load_model(tiny_bundle)
    tta = covidxray.load_model(tiny_bundle, tta=4)
    p_plain = _probs(plain.predict_batch(images), plain.classes)
    p_tta = _probs(tta.predict_batch(images, batch_size=2), tta.classes)
    assert np.abs(p_tta - p_plain).max() > 1e-4  # the views change what the model says
    for i, path in enumerate(images):  # each view alone through the plain backend, then the mean
        canonical = plain.preprocessing.canonical(load_image(path).pixels)
        x = plain.preprocessing.view_inputs(canonical[None], 4)
        per_view = np.concatenate([plain.backend.run(x[v : v + 1])[0] for v in range(4)])
        np.testing.assert_allclose(p_tta[i], per_view.mean(axis=0), atol=1e-6)
    assert tta.info()["tta"] == {"views": 4, "names": list(TTA_VIEWS[:4])}
    assert "TTA over 4 views" in tta.options and plain.options == ""


def test_ensemble_of_a_model_with_itself_is_the_model(tiny_bundle, images):
    one = covidxray.load_model(tiny_bundle)
    two = covidxray.load_model([tiny_bundle, tiny_bundle])
    a, b = one.predict_batch(images), two.predict_batch(images)
    np.testing.assert_allclose(_probs(b, two.classes), _probs(a, one.classes), atol=1e-7)
    assert [p.label for p in a] == [p.label for p in b]
    assert two.version == f"{one.version}+{one.version}"
    assert len(two.info()["ensemble"]["members"]) == 2 and one.info()["ensemble"] is None


def test_ensemble_members_with_other_classes_are_refused(tiny_bundle, tmp_path, images, capsys):
    other = tmp_path / "other" / "model"
    shutil.copytree(tiny_bundle, other)
    update_bundle(other, classes=["covid", "normal", "tuberculosis"])
    with pytest.raises(ModelLoadError, match=r"predicts \['covid', 'normal', 'tuberculosis'\].*same classes"):
        covidxray.load_model([tiny_bundle, other])
    argv = ["predict", "--image", str(images[0]), "--model", str(tiny_bundle), "--model", str(other)]
    assert main(argv) == 5
    assert "every model must predict the same classes" in capsys.readouterr().err
    np.testing.assert_array_equal(class_columns(["a", "b", "c"], ["c", "a", "b"], "m"), [1, 2, 0])
    with pytest.raises(EnsembleError, match="m: predicts"):
        class_columns(["a", "b"], ["a", "a"], "m")


def test_torch_and_onnx_tta_agree(exported, images):
    t = covidxray.load_model(exported, backend="torch", tta=8)
    o = covidxray.load_model(exported / "model.onnx", backend="onnx", tta=8)
    np.testing.assert_allclose(
        _probs(o.predict_batch(images), o.classes),
        _probs(t.predict_batch(images), t.classes),
        atol=1e-5,
        rtol=0,
    )


def test_cli_tta_and_ensemble_on_onnx_without_torch(exported, images):
    code = (
        "import sys; from covidxray.cli import main; "
        f"rc = main(['predict', '--image', {str(images[0])!r}, '--model', {str(exported)!r}, "
        f"'--model', {str(exported)!r}, '--backend', 'onnx', '--tta', '3', '--json']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH'); sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("NO_TORCH")
    result = json.loads(res.stdout[: res.stdout.rindex("}") + 1])
    assert result["tta"] == list(TTA_VIEWS[:3]) and len(result["ensemble"]) == 2
    assert "+" in result["model"]


def test_cli_batch_summary_says_what_was_averaged(tiny_bundle, images, tmp_path, capsys):
    out = tmp_path / "p.csv"
    argv = ["predict", "--images", str(images[0].parent), "--model", str(tiny_bundle), "--tta", "2"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    assert "averaged: TTA over 2 views (identity, zoom_in)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*argv[:-1], "9"])
    assert exc.value.code == 2
    assert "--tta: expected a number of views from 2 to 8, or none" in capsys.readouterr().err


def test_evaluate_with_tta_and_an_ensemble_matches_the_predictor(tiny_bundle, tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    from covidxray.data.manifest import read_manifest
    from test_evaluation_end_to_end import copy_run, write_manifest

    manifest = write_manifest(tmp_path / "data")
    run = copy_run(tiny_bundle, tmp_path / "run")
    before = read_config(run / "model")
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(run), "--model", str(run), "--manifest", str(manifest), "--tta", "3"]
    argv += ["--out", str(out), "--bootstrap", "10", "--no-probe", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    assert "test-time augmentation over 3 views" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"]["options"]["tta"] == 3 and metrics["model"]["tta"] == list(TTA_VIEWS[:3])
    assert len(metrics["model"]["ensemble"]) == 2
    assert "not_stored" in metrics["operating_point"]
    assert read_config(run / "model").operating_point == before.operating_point  # nothing written back
    df = read_manifest(manifest)
    test = df[df["split"] == "test"]
    predictor = covidxray.load_model([run, run], tta=3)
    preds = predictor.predict_batch([str(Path(df.attrs["root"]) / p) for p in test["path"]])
    auc = roc_auc_score(test["label"] == "covid", [p.probabilities["covid"] for p in preds])
    assert metrics["overall"]["per_class"]["covid"]["roc_auc"]["value"] == pytest.approx(auc, abs=1e-9)
    ensemble_only = ["evaluate", "--model", str(run), "--model", str(run), "--manifest", str(manifest)]
    assert main(ensemble_only) == 2
    assert "needs --out" in capsys.readouterr().err


def test_lungcrop_tta_ensemble_segments_once_and_decides_at_the_first_members_points(
    tiny_bundle, data_root, tmp_path
):
    from covidxray.bundle import set_operating_points
    from covidxray.segmentation.data import JSRT, mask_pairs
    from covidxray.segmentation.segmenter import default_segmenter, default_segmenter_version

    paths = [p.image for p in mask_pairs(data_root) if p.source == JSRT][:2]
    lc = tmp_path / "lungcrop"
    shutil.copytree(tiny_bundle, lc)
    pre = read_config(lc).preprocessing
    update_bundle(
        lc,
        preprocessing=Preprocessing(
            image_size=pre.image_size, resize="lungcrop", lung_segmenter=default_segmenter_version()
        ),
    )
    set_operating_points(lc, {"screening": {"class": "covid", "threshold": 0.0}}, "screening")
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    set_operating_points(other, {"balanced": {"class": "covid", "threshold": 1.0}}, "balanced")

    model = covidxray.load_model([lc, other], tta=3)
    seg, calls = default_segmenter("onnx"), []
    segment_many = seg.segment_many
    seg.segment_many = lambda imgs, *a, **k: calls.append(len(imgs)) or segment_many(imgs, *a, **k)
    model._segmenter = seg
    preds = model.predict_batch(paths)
    assert calls == [len(paths)]  # one mask per image, shared by the 3 views and both members
    got = _probs(preds, model.classes)
    for i, path in enumerate(paths):  # the views are made from each member's (cropped) canonical image
        pixels, mask = load_image(path).pixels, segment_many([path])[0].mask
        crop = model.members[0].preprocessing.canonical(pixels, mask)
        assert crop.shape == model.members[1].preprocessing.canonical(pixels).shape
        assert not np.array_equal(crop, model.members[1].preprocessing.canonical(pixels))  # really cropped
        per_member = [
            mean_over_views(m.backend.run(m.preprocessing.view_inputs(c[None], 3))[0], 3)[0]
            for m, c in zip(
                model.members, [crop, model.members[1].preprocessing.canonical(pixels)], strict=True
            )
        ]
        np.testing.assert_allclose(got[i], np.mean(per_member, axis=0), atol=1e-6)
    # the first member's points decide (threshold 0: always covid), not the second's (threshold 1)
    assert [p.label for p in preds] == ["covid"] * len(paths)
    assert all(p.decision["point"] == "screening" and p.covid_threshold == 0.0 for p in preds)
    assert model.info()["decision"] == "screening" and preds[0].lungs is not None
