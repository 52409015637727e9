"""Which training rows each epoch visits, in which order, on which process.

An epoch's order is a pure function of (seed, epoch): a resumed run replays it and skips the batches already
done; under DDP every process computes the same order and takes every ``world``-th entry (the distributed
version of both samplers, equal batch counts on every rank).
"""

from __future__ import annotations

import numpy as np


def balanced_weights(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Per-row sampling probabilities: every label equally likely and, within a label, every source equally likely."""
    labels, sources = np.asarray(labels), np.asarray(sources)
    weights = np.zeros(len(labels), dtype=np.float64)
    uniq = np.unique(labels)
    for lab in uniq:
        in_label = labels == lab
        srcs = np.unique(sources[in_label])
        for src in srcs:
            group = in_label & (sources == src)
            weights[group] = 1.0 / (len(uniq) * len(srcs) * group.sum())
    return weights / weights.sum()


def epoch_order(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Row positions for one epoch: a permutation of ``n`` rows, or ``n`` weighted draws with replacement."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A17])
    if weights is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=weights)


def shard(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's part of ``order`` (padded by wrapping so every rank gets the same count)."""
    if world <= 1:
        return order
    per_rank = -(-len(order) // world)
    padded = np.resize(order, per_rank * world)
    return padded[rank::world]


def expected_label_frequency(labels: np.ndarray, num_classes: int, weights: np.ndarray | None) -> np.ndarray:
    """How often each class index arrives under the sampler (weights None = uniform over rows)."""
    labels = np.asarray(labels)
    p = np.full(len(labels), 1.0 / max(1, len(labels))) if weights is None else weights
    return np.bincount(labels, weights=p, minlength=num_classes)
