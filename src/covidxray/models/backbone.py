"""A backbone that returns the pooled feature vector, plus a fresh linear head: the shape most families share."""

from __future__ import annotations

import torch
from torch import nn

from covidxray.models.base import Classifier


class BackboneClassifier(Classifier):
    """``head(backbone(x))``: ``backbone`` gives the pooled penultimate vector of ``num_features``.

    ``backbone_prefix`` is where the backbone's own state-dict keys live in this module, and
    ``pretrained_head_keys`` names the key prefixes of the backbone's original classifier (e.g. ImageNet's
    1000-class layer), dropped when :func:`covidxray.models.weights.load_pretrained` reads such a file.
    """

    backbone_prefix = "backbone."

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        gradcam_layer: str,
        pretrained_head_keys: tuple[str, ...] = (),
    ):
        super().__init__()
        self.backbone = backbone
        self.num_features = int(num_features)
        self.head = nn.Linear(num_features, num_classes)
        self.gradcam_layer = gradcam_layer
        self.pretrained_head_keys = tuple(pretrained_head_keys)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
