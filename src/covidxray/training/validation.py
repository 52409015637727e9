"""Validation after every epoch: loss, accuracy, macro ROC AUC, COVID sensitivity and COVID ROC AUC.

Under DDP each rank scores its share of the val rows and the logits are gathered, so every rank computes the
same metrics on the whole split (and the LR schedule and early stopping agree across ranks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from covidxray.metrics import roc_auc
from covidxray.models.base import XRayNet, logits_to_probabilities
from covidxray.preprocess import Preprocessing
from covidxray.training.dataset import SplitData, batch_inputs
from covidxray.training.distributed import Dist, gather_rows


def _sigmoid_rows(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Each row's sigmoid BCE of "is the last class", the target smoothed towards 0.5 by ``smoothing``."""
    target = targets.float()
    if smoothing:
        target = target * (1 - smoothing) + 0.5 * smoothing
    return F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")


def task_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Softmax cross-entropy, or for one output the sigmoid BCE of "is the last class" (weights by class).

    ``smoothing`` > 0 (training only) spreads that share of each target evenly over the classes (label smoothing,
    Szegedy et al. 2016; for one sigmoid output the target moves from 0 / 1 towards 0.5). With class weights the
    two forms weigh differently: softmax weights each class's part of the smoothed target by that class's weight
    (PyTorch's rule), the sigmoid form the whole row by its true class's weight (the balanced sampler's weights
    are 1, so the recipe sees no difference)."""
    if logits.shape[-1] == 1:
        per_row = _sigmoid_rows(logits, targets, smoothing)
        if weight is None:
            return per_row.mean()
        w = weight[targets]
        return (per_row * w).sum() / w.sum()
    if smoothing:
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=smoothing)
    return F.cross_entropy(logits, targets, weight=weight)


def task_loss_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """:func:`task_loss` row by row (N,), unnormalised: each row's loss times its class weight, as PyTorch's
    ``reduction="none"`` gives it (GroupDRO averages the rows of each group itself)."""
    if logits.shape[-1] == 1:
        per_row = _sigmoid_rows(logits, targets, smoothing)
        return per_row if weight is None else per_row * weight[targets]
    return F.cross_entropy(logits, targets, weight=weight, label_smoothing=smoothing, reduction="none")


def val_metrics(logits: np.ndarray, targets: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """The per-epoch validation figures (``None`` where a figure is undefined, e.g. a class is absent)."""
    lt, yt = torch.from_numpy(logits), torch.from_numpy(targets)
    probs = logits_to_probabilities(lt).numpy().astype(np.float64)
    aucs = [roc_auc(targets == k, probs[:, k], c)[0] for k, c in enumerate(classes)]
    defined = [a for a in aucs if a is not None]
    out: dict[str, Any] = {
        "val_loss": float(task_loss(lt, yt)) if len(yt) else None,
        "val_acc": float(np.mean(probs.argmax(1) == targets)) if len(yt) else None,
        "val_auc_macro": float(np.mean(defined))
        if defined
        else None,  # over the classes whose AUC is defined
        "val_sensitivity_covid": None,
        "val_auc_covid": None,
    }
    if "covid" in classes:
        k = classes.index("covid")
        pos = targets == k
        out["val_sensitivity_covid"] = float(np.mean(probs[pos].argmax(1) == k)) if pos.any() else None
        out["val_auc_covid"] = aucs[k]
    return out


def rank_rows(ctx: Dist, n: int) -> np.ndarray:
    """The rows of a split of ``n`` that this rank scores in :func:`predict_logits`."""
    return np.arange(ctx.rank, n, ctx.world)


def gathered_order(ctx: Dist, n: int) -> np.ndarray:
    """The split's row of each row :func:`predict_logits` returns: every rank's rows, in rank order."""
    return np.concatenate([rank_rows(Dist(rank=r, world=ctx.world), n) for r in range(ctx.world)])


@torch.no_grad()
def predict_logits(
    model: XRayNet, images: np.ndarray, split: SplitData, pre: Preprocessing, ctx: Dist, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets of the whole split (gathered over ranks, in :func:`gathered_order`)."""
    model.eval()
    mine = rank_rows(ctx, len(split))
    chunks = []
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        x = (
            batch_inputs(images, split.positions[idx], pre)
            .to(ctx.device)
            .contiguous(memory_format=torch.channels_last)
        )
        chunks.append(model(x).float().cpu().numpy())
    logits = np.concatenate(chunks) if chunks else np.zeros((0, model.num_outputs), np.float32)
    return gather_rows(ctx, logits), gather_rows(ctx, split.targets[mine])
