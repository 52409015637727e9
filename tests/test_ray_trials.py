"""``covidxray crossval --engine ray`` and ``covidxray compare --engine ray``: the same outputs as the local engine.

Short trainings (1 epoch at 32 px) on tiny made-up images; the two folds run as two Ray tasks on the shared
local Ray instance (``ray_local`` in conftest.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from covidxray.cli import main
from covidxray.evaluation.crossval import fold_dir
from test_evaluation_crossval import LAYOUT
from test_evaluation_end_to_end import write_manifest


def _weights(run: Path) -> dict[str, np.ndarray]:
    """The tensors of a run's bundle (the file's bytes may differ: safetensors orders its metadata freely)."""
    from safetensors.numpy import load_file

    return load_file(run / "model" / "model.safetensors")


def _without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def test_crossval_and_compare_on_ray_give_the_local_outputs(tmp_path, ray_local, capsys):
    root = tmp_path / "data"
    root.mkdir()
    manifest = write_manifest(root, layout=LAYOUT, images_per_patient=1)
    out = tmp_path / "cv"
    argv = ["crossval", "--model", "seed_cnn2", "--manifest", str(manifest), "--holdout-source", "alpha",
            "--holdout-source", "beta", "--out", str(out), "--epochs", "1", "--image-size", "32", "--threads", "1",
            "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "50", "--no-probe"]  # fmt: skip
    assert main(argv) == 0
    local = json.loads((out / "crossval.json").read_text())
    local_md = (out / "crossval.md").read_text()
    weights = {s: _weights(fold_dir(out, s)) for s in ("alpha", "beta")}
    capsys.readouterr()

    assert main([*argv, "--engine", "ray", "--retrain"]) == 0  # the same folds, trained again as Ray tasks
    captured = capsys.readouterr()
    assert "2 Ray task(s), 1 CPU(s) each" in captured.err and "done: fold holding out beta" in captured.err
    ray = json.loads((out / "crossval.json").read_text())
    assert _without(ray, "command") == _without(local, "command") and len(ray["folds"]) == 2
    for s in ("alpha", "beta"):  # seeded training gives the same weights in a Ray worker
        again = _weights(fold_dir(out, s))
        assert again.keys() == weights[s].keys() and all(
            np.array_equal(again[k], weights[s][k]) for k in again
        )
    table = [line for line in local_md.splitlines() if line.startswith("|")]
    assert table == [line for line in (out / "crossval.md").read_text().splitlines() if line.startswith("|")]
    assert "alpha" in captured.out and "beta" in captured.out

    # compare evaluates runs that lack an evaluation: as Ray tasks, then locally; the same comparison
    runs = [str(fold_dir(out, s)) for s in ("alpha", "beta")]
    common = ["compare", *runs, "--manifest", str(manifest), "--cache-dir", str(tmp_path / "cache"),
              "--bootstrap", "50", "--no-probe"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "cmp-ray"), "--engine", "ray"]) == 0
    assert "done: evaluation of" in capsys.readouterr().err
    for r in runs:
        shutil.rmtree(f"{r}/evaluation")
    assert main([*common, "--out", str(tmp_path / "cmp-local")]) == 0
    a, b = (json.loads((tmp_path / d / "comparison.json").read_text()) for d in ("cmp-ray", "cmp-local"))
    assert a["metrics"] == b["metrics"] and len(a["metrics"]) > 10
    assert [_without(r, "images_per_second") for r in a["runs"]] == [
        _without(r, "images_per_second") for r in b["runs"]
    ]


def test_compare_trains_models_as_trials_and_ray_gives_the_local_runs(tmp_path, ray_local, capsys):
    root = tmp_path / "data"
    root.mkdir()
    manifest = write_manifest(root, layout=LAYOUT, images_per_patient=1)
    common = ["compare", "--train", "resnet18", "seed_cnn2", "--manifest", str(manifest), "--epochs", "1",
              "--image-size", "32", "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "50",
              "--no-probe", "--lung-attention", "0"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    err = capsys.readouterr().err
    assert "2 Ray task(s), 1 CPU(s) each" in err and "done: training of seed_cnn2" in err
    for name in ("resnet18", "seed_cnn2"):  # one run per model under OUT, the same weights either way
        a, b = _weights(tmp_path / "local" / name), _weights(tmp_path / "ray" / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        cfg = json.loads((tmp_path / "ray" / name / "model" / "config.json").read_text())
        assert cfg["architecture"]["name"] == name and cfg["preprocessing"]["image_size"] == 32
    a, b = (json.loads((tmp_path / d / "comparison.json").read_text()) for d in ("local", "ray"))
    assert a["metrics"] == b["metrics"] and [r["name"] for r in a["runs"]] == ["resnet18", "seed_cnn2"]
    # a finished run is kept (no second training), and --train without --manifest is a usage error
    run_json = (
        tmp_path / "local" / "seed_cnn2" / "run.json"
    )  # a run stopped by its time budget is finished too
    run_json.write_text(run_json.read_text().replace('"status": "completed"', '"status": "time_budget"'))
    before = run_json.stat().st_mtime_ns
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert run_json.stat().st_mtime_ns == before
    assert main(["compare", "--train", "seed_cnn2", "--out", str(tmp_path / "x")]) == 2
    assert main(["compare", "--out", str(tmp_path / "x")]) == 2
