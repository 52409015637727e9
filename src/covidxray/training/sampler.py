"""Which training rows each epoch visits, in which order, on which process.

An epoch's order is a pure function of (seed, epoch): a resumed run replays it and skips the batches already
done; under DDP every process computes the same order and takes every ``world``-th entry (the distributed
version of both samplers, equal batch counts on every rank).
"""

from __future__ import annotations

import numpy as np


def balanced_weights(labels: np.ndarray, sources: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Per-row sampling probabilities: every label equally likely; within a label, each source's share is
    proportional to its image count raised to ``power`` (0.5 by default: the square root).

    Equal shares per source would draw a source's handful of images (e.g. 15 cohen normals beside 1,000+
    Kermany and Radiography normals) hundreds of times an epoch; proportional shares would let the largest
    source (Kermany's children) stand for a whole label. The square root sits between: no source dominates a
    label and none is memorised. ``power`` 0 gives every source of a label the same share (a small adult
    source then stands for half a label beside Kermany's children); 1 gives every row the same chance within
    its label.
    """
    labels, sources = np.asarray(labels), np.asarray(sources)
    weights = np.zeros(len(labels), dtype=np.float64)
    uniq = np.unique(labels)
    for lab in uniq:
        in_label = labels == lab
        srcs, counts = np.unique(sources[in_label], return_counts=True)
        # np.sqrt for the default keeps the draws of every run made before ``power`` existed bit for bit
        shares = np.sqrt(counts) if power == 0.5 else counts.astype(np.float64) ** float(power)
        shares = shares / shares.sum()
        for src, share, count in zip(srcs, shares, counts, strict=True):
            weights[in_label & (sources == src)] = share / (len(uniq) * count)
    return weights / weights.sum()


def epoch_order(
    n: int, seed: int, epoch: int, weights: np.ndarray | None = None, size: int = 0
) -> np.ndarray:
    """Row positions for one epoch: a permutation of ``n`` rows, or weighted draws with replacement.

    ``size`` (0: ``n``) draws that many positions instead -- a shorter (or longer) epoch, so slow models on a
    CPU still validate and checkpoint at a useful rhythm.
    """
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A17])
    size = int(size) or n
    if weights is None:
        order = np.concatenate([rng.permutation(n) for _ in range(-(-size // n))])
        return order[:size]
    return rng.choice(n, size=size, replace=True, p=weights)


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
