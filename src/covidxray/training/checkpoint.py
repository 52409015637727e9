"""``checkpoints/last.pt``: everything needed to continue a run exactly where it stopped, written atomically.

It holds the model, optimizer and LR-scheduler states, the epoch and the number of batches already done in it,
the running train sums of that epoch, the best score so far, the history, the elapsed training time, the
torch RNG state (dropout) and the config. The epoch order and augmentation are functions of (seed, epoch,
step), so nothing else is needed to replay the rest of an epoch. Only tensors and plain Python values are
stored, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = Path("checkpoints") / "last.pt"
CHECKPOINT_VERSION = 1


class ResumeError(ValueError):
    """A run that cannot be resumed (no checkpoint, or one from another version)."""


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``<run>/checkpoints/last.pt`` via a temporary file and an atomic rename."""
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"checkpoint_version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise ResumeError(f"{run_dir}: no checkpoint at {path}; was the run started with 'covidxray train'?")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ResumeError(
            f"{path}: checkpoint version {state.get('checkpoint_version')!r}, this covidxray resumes "
            f"version {CHECKPOINT_VERSION}"
        )
    return state
