"""The contract every covidxray network meets, and the wrapper that makes a saved model self-contained."""

from __future__ import annotations

import warnings

import torch
from torch import nn


class Classifier(nn.Module):
    """Base class of registered architectures.

    Subclasses set ``self.head`` (ending in an ``nn.Linear``), implement :meth:`features` (the penultimate
    vector, used by the shortcut probe and the input guard) and name the module Grad-CAM hooks in
    ``gradcam_layer`` (a dotted name relative to the classifier).
    """

    gradcam_layer: str = ""
    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def head_parameters(self):
        return self.head.parameters()

    def freeze_backbone(self) -> None:
        """Train the head only (seed 002's transfer-learning recipe)."""
        head_ids = {id(p) for p in self.head.parameters()}
        for p in self.parameters():
            p.requires_grad = id(p) in head_ids


class XRayNet(nn.Module):
    """A classifier plus its input normalisation: takes float images in [0, 1], shape (N, C, S, S).

    Keeping mean/std inside the network means a bundle or an ONNX file needs nothing but the documented
    preprocessing (:class:`covidxray.preprocess.Preprocessing`) in front of it. Like torchxrayvision, it
    checks its inputs and warns on a value range that says the caller forgot to preprocess: in eval mode on
    every call, in training mode on the first batch only (the min/max would otherwise cost every step).
    """

    def __init__(self, net: Classifier, mean: float, std: float, num_outputs: int):
        super().__init__()
        self.net = net
        self.num_outputs = int(num_outputs)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self._checked_training_input = False

    def _check(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or x.numel() == 0:
            return
        if self.training:
            if self._checked_training_input:
                return
            self._checked_training_input = True
        lo, hi = float(x.min()), float(x.max())
        if lo < -0.01 or hi > 1.01:
            warnings.warn(
                f"model input values span [{lo:.3g}, {hi:.3g}] but [0, 1] is expected: "
                "use covidxray.preprocess.Preprocessing (the bundle's 'preprocessing') on raw images",
                stacklevel=3,
            )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (N, K), or (N, 1) for a single sigmoid output."""
        return self.net(self.normalize(x))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, K); a single sigmoid output becomes two columns [1 - p, p]."""
        return logits_to_probabilities(self.forward(x))

    def probabilities_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities (N, K) and the penultimate features they come from, in one pass: the path
        prediction, evaluation, the ONNX export and the input guard all take."""
        feats = self.features(x)
        return logits_to_probabilities(self.net.head(feats)), feats


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)
