"""Source-adversarial training: a source classifier on the penultimate features behind a gradient-reversal layer.

The network is asked to classify the disease while a small MLP tries to tell, from the same features, which
collection an image came from; the gradient-reversal layer (Ganin & Lempitsky, ICML 2015, "DANN") passes the
adversary's gradient back to the features with its sign flipped and scaled by ``lambda``, so the features are
pushed towards carrying no source information. ``lambda`` follows DANN's schedule,
``weight * (2 / (1 + exp(-10 p)) - 1)`` with ``p`` the fraction of training done (0 at the start, ~weight by a
third of the way), so the adversary only bites once the classifier has found its features.

Two forms (``TrainConfig.adversary``):

- ``marginal``: predict the source from the features, over all images. Our sources are confounded with labels
  (Kermany has no COVID-19), so this also removes label information that *is* source information.
- ``conditional``: predict the source *within each class* (one source head per class, the loss on the head of
  the image's true class; cf. label-conditional adversaries, Li et al., ECCV 2018). Only classes with images from
  at least two sources contribute, and only those sources compete: it asks "is this normal image from
  Kermany or from the Radiography Database?", never "is this COVID-19 image from Kermany?".

The adversary is used in training only: bundles hold the classifier alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidxray.training.config import ADVERSARIES


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lam = float(lam)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity forward; the gradient multiplied by ``-lam`` backward."""
    return _GradReverse.apply(x, lam)


def dann_lambda(weight: float, progress: float) -> float:
    """DANN's schedule: 0 at ``progress`` 0, rising to ``weight`` (0.76 x weight at 1/5, 0.99 x at 1/2)."""
    p = min(max(float(progress), 0.0), 1.0)
    return float(weight) * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class SourceAdversary(nn.Module):
    """The source classifier: features (N, F) -> source logits; :meth:`loss` applies the gradient reversal.

    ``present`` (K classes, S sources) says which sources have training images of each class; it decides which
    sources compete in the conditional form and which classes contribute at all.
    """

    def __init__(self, n_features: int, present: np.ndarray, mode: str, hidden: int = 64):
        super().__init__()
        if mode not in ADVERSARIES[1:]:
            raise ValueError(f"adversary must be one of {list(ADVERSARIES[1:])}, got {mode!r}")
        present = np.asarray(present, bool)
        self.mode = mode
        self.n_classes, self.n_sources = present.shape
        heads = self.n_classes if mode == "conditional" else 1
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, heads * self.n_sources)
        )
        if mode == "marginal":  # every source competes for every image
            present = np.ones_like(present) & present.any(axis=0, keepdims=True)
        self.register_buffer("present", torch.from_numpy(present))
        self.register_buffer("usable", torch.from_numpy(present.sum(axis=1) >= 2))

    def logits(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Source logits (N, S) of each image's head (its class's head in the conditional form)."""
        z = self.net(features.flatten(1))
        if self.mode == "conditional":
            z = z.view(len(z), self.n_classes, self.n_sources)[torch.arange(len(z)), targets]
        return z.masked_fill(~self.present[targets], float("-inf"))

    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, sources: torch.Tensor, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(cross-entropy of the source over the usable images, their number correct, their number).

        The features reach the adversary through :func:`grad_reverse` with ``lam``.
        """
        keep = self.usable[targets]
        n = int(keep.sum())
        if n == 0:
            zero = features.sum() * 0.0
            return zero, torch.zeros(()), 0
        z = self.logits(grad_reverse(features, lam)[keep], targets[keep])
        loss = F.cross_entropy(z, sources[keep])
        correct = (z.detach().argmax(1) == sources[keep]).sum()
        return loss, correct, n


def source_table(targets: np.ndarray, sources: np.ndarray, n_classes: int) -> tuple[list[str], np.ndarray]:
    """(sorted source names, (K, S) bool: class k has training images from source s)."""
    names = sorted(set(map(str, sources)))
    present = np.zeros((n_classes, len(names)), bool)
    index = {s: i for i, s in enumerate(names)}
    for t, s in zip(targets, sources, strict=True):
        present[int(t), index[str(s)]] = True
    return names, present
