"""``covidxray train`` runs unchanged under ``torchrun --nproc_per_node 2`` (DDP, gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from covidxray.bundle import load_bundle
from covidxray.data.manifest import read_manifest
from covidxray.training.config import TrainConfig
from covidxray.training.dataset import load_images, select_split
from covidxray.training.distributed import Dist
from covidxray.training.validation import predict_logits, val_metrics
from test_training_data import make_manifest

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this python")
def test_two_process_run_writes_one_bundle_with_whole_split_metrics(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "data")
    run, cache = tmp_path / "ddp", tmp_path / "data" / "cache"
    cmd = [
        str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "covidxray.cli", "train",
        "--manifest", str(manifest), "--model", "seed_cnn2", "--out", str(run), "--epochs", "1",
        "--image-size", "32", "--batch-size", "4", "--cache-dir", str(cache), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("bundle: ") == 1  # rank 0 alone reports (and writes)

    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["world_size"] == 2
    bundle = load_bundle(run / "model")
    assert bundle.config.training["world_size"] == 2

    # the logged val metrics are those of the whole val split, not of one rank's half
    cfg = TrainConfig(manifest=str(manifest), image_size=32, cache_dir=str(cache), progress=False)
    df = read_manifest(manifest)
    val = select_split(df, cfg, "val")
    images = load_images(df, cfg.preprocessing(), cfg, progress=False)
    logits, targets = predict_logits(bundle.model, images, val, cfg.preprocessing(), Dist(), batch_size=16)
    assert len(targets) == len(val) == 12
    history = json.loads((run / "history.jsonl").read_text().splitlines()[0])
    assert val_metrics(logits, targets, cfg.classes)["val_loss"] == pytest.approx(
        history["val_loss"], rel=1e-4
    )
