"""A run killed mid-epoch (SIGKILL) continues with ``--resume`` to the full epoch count, as if never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from covidxray.bundle import load_bundle
from covidxray.training.checkpoint import checkpoint_path, load_checkpoint
from covidxray.training.config import TrainConfig
from covidxray.training.trainer import train
from test_training_data import make_manifest

EPOCHS = 2
CLI = str(Path(sys.executable).with_name("covidxray"))  # the entry point (not -m: see the report)


def _train_cmd(manifest: Path, out: Path) -> list[str]:
    return [
        CLI, "train", "--manifest", str(manifest), "--model", "seed_cnn2",
        "--out", str(out), "--epochs", str(EPOCHS), "--image-size", "32", "--batch-size", "4",
        "--checkpoint-every", "2", "--cache-dir", str(manifest.parent / "cache"), "--threads", "1",
        "--no-progress",
    ]  # fmt: skip


def _history(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]


def test_killed_run_resumes_mid_epoch_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(manifest, run), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    try:
        while not checkpoint_path(run).exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = load_checkpoint(run)
    assert (state["epoch"], state["step"]) < (EPOCHS, 0)  # killed before the end

    done = subprocess.run(
        [CLI, "train", "--resume", str(run), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"bundle: {run / 'model'}" in done.stdout
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_run"] == EPOCHS
    bundle = load_bundle(run / "model")
    assert bundle.config.training["epochs_run"] == EPOCHS

    cfg = TrainConfig.from_dict({**state["config"], "out": str(tmp_path / "reference"), "progress": False})
    assert _history(run) == _history(train(cfg))  # uninterrupted, in this process
