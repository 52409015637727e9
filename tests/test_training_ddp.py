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
        "--sam", "0.05",  # sharpness-aware minimisation's second pass runs under DDP too
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("bundle: ") == 1  # rank 0 alone reports (and writes)

    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["world_size"] == 2 and info["config"]["sam"] == 0.05
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


def _dro_rank(rank: int, world: int, init: str, out: str) -> None:
    """One rank of the GroupDRO check: its half of a batch, group means over both ranks, q and gradients saved."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from covidxray.training.groupdro import GroupDRO

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        groups = np.array([0, 0, 1, 2, 1, 0, 2, 2])
        losses = torch.tensor([0.5, 1.0, 2.0, 0.2, 1.5, 0.7, 0.1, 0.4], requires_grad=True)
        mine = np.arange(rank * 4, rank * 4 + 4)  # rank 0: rows 0-3 (group 2 once), rank 1: rows 4-7
        dro = GroupDRO(groups, ["a", "b", "c"], 0.5, sync=True)
        loss = dro.loss(losses[mine], mine)
        loss.backward()
        grad = losses.grad.clone()
        dist.all_reduce(grad)
        torch.save({"q": dro.q, "grad": grad / world}, f"{out}/rank{rank}.pt")  # DDP's averaged gradient
    finally:
        dist.destroy_process_group()


def test_group_dro_under_ddp_is_the_whole_batchs_objective(tmp_path: Path) -> None:
    import numpy as np
    import torch
    import torch.multiprocessing as mp

    from covidxray.training.groupdro import GroupDRO

    mp.spawn(_dro_rank, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    groups = np.array([0, 0, 1, 2, 1, 0, 2, 2])
    losses = torch.tensor([0.5, 1.0, 2.0, 0.2, 1.5, 0.7, 0.1, 0.4], requires_grad=True)
    one = GroupDRO(groups, ["a", "b", "c"], 0.5)  # one process, the whole batch
    one.loss(losses, np.arange(8)).backward()
    assert torch.allclose(r0["q"], r1["q"]) and torch.allclose(r0["q"], one.q)
    assert torch.allclose(r0["grad"], losses.grad, atol=1e-6)
