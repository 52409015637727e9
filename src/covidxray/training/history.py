"""A run's per-epoch record: ``history.csv``, ``history.jsonl`` and ``curves.png`` (train vs val)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ADVERSARY_COLUMNS = ("adv_loss", "adv_source_acc", "adv_lambda")  # covidxray.training.adversary
# runs with a held-out source: that source's figures after each epoch (recorded, never used to choose weights)
HOLDOUT_COLUMNS = ("holdout_auc_covid", "holdout_auc_macro")
COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_auc_macro",
    "val_sensitivity_covid",
    "val_auc_covid",
    "lr",
    "seconds",
    "images_per_s",
)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite both history files from the in-memory list (a resumed run never duplicates an epoch)."""
    import pandas as pd

    _atomic_write(run_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    # only runs with an adversary / a held-out source
    extra = [c for c in (*ADVERSARY_COLUMNS, *HOLDOUT_COLUMNS) if any(c in h for h in history)]
    frame = pd.DataFrame(history, columns=[*COLUMNS, *extra])
    _atomic_write(run_dir / "history.csv", frame.to_csv(index=False))


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows :func:`write_history` wrote to ``history.jsonl``, one dict per epoch."""
    text = (Path(run_dir) / "history.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def plot_curves(run_dir: Path, history: list[dict[str, Any]], title: str = "") -> Path:
    """Accuracy and loss per epoch, train vs val, as ``curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, metric in zip(axes, ("acc", "loss"), strict=True):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], "s-", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out = run_dir / "curves.png"
    tmp = run_dir / ".curves.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")
