"""Distributed data parallel glue: the same ``covidxray train`` runs alone or under ``torchrun``.

``torchrun --nproc_per_node 2 -m covidxray.cli train ...`` sets ``RANK``/``WORLD_SIZE``; then the process group
uses gloo on CPU (NCCL on GPUs), each rank trains on its shard of the epoch order, gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel`, metrics are summed/gathered across ranks, and rank 0 alone
writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed() -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cpu")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return Dist(rank=rank, world=dist.get_world_size(), device=device)


def shutdown(ctx: Dist) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Dist) -> None:
    if ctx.active:
        dist.barrier()


def sum_across(ctx: Dist, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not ctx.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def gather_rows(ctx: Dist, array: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows (in rank order)."""
    if not ctx.active:
        return array
    parts: list[np.ndarray | None] = [None] * ctx.world
    dist.all_gather_object(parts, array)
    return np.concatenate([p for p in parts if p is not None])


def broadcast_flag(ctx: Dist, flag: bool) -> bool:
    """Rank 0's decision (e.g. stop early), so every rank leaves the loop together."""
    if not ctx.active:
        return flag
    t = torch.tensor([1 if flag else 0])
    dist.broadcast(t, src=0)
    return bool(t.item())
