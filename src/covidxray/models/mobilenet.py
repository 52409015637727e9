"""MobileNetV2 in plain torch, with torchvision's module layout.

:class:`MobileNetV2Backbone` reproduces ``torchvision.models.mobilenet_v2`` (width 1.0): module names and
state-dict keys (``features.0.0``, ``features.N.conv.M``, ``features.18.1``) match, so an ImageNet state dict
saved by torchvision loads with :func:`covidxray.models.weights.load_pretrained`; its ``classifier.1``
(1000 classes) is dropped for our ``head``.
"""

from __future__ import annotations

import torch
from torch import nn

from covidxray.models.backbone import BackboneClassifier
from covidxray.models.registry import register_model

# t (expansion), c (output channels), n (repeats), s (first stride) -- torchvision's / the paper's table
MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU6; keys ``0`` / ``1`` like torchvision's ``Conv2dNormActivation``."""

    def __init__(self, inp: int, out: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(inp, out, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t=1) -> 3x3 depthwise -> 1x1 linear projection; residual when shapes allow."""

    def __init__(self, inp: int, out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """``features`` (stem, 17 inverted residual blocks, 1x1 conv to 1280) -> global average pool -> (N, 1280)."""

    def __init__(self, in_channels: int = 1, last_channel: int = 1280):
        super().__init__()
        channels = 32
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, channels, stride=2)]
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        layers.append(ConvBNReLU6(channels, last_channel, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.last_channel = last_channel
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


class MobileNetV2Classifier(BackboneClassifier):
    """MobileNetV2 with torchvision's ``Dropout(0.2)`` before the linear ``head``."""

    def __init__(self, num_classes: int, in_channels: int, dropout: float = 0.2):
        backbone = MobileNetV2Backbone(in_channels)
        last = len(backbone.features) - 1
        super().__init__(
            backbone, backbone.last_channel, num_classes, f"backbone.features.{last}", ("classifier.",)
        )
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.head.weight, 0, 0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


@register_model("mobilenet_v2")
def mobilenet_v2(
    num_classes: int = 3, in_channels: int = 1, image_size: int | None = None
) -> MobileNetV2Classifier:
    """MobileNetV2 (width 1.0, 3.5 M parameters with ImageNet's head); 1280-d features, Grad-CAM hooks the last
    1x1 conv block (``features.18``). ``image_size`` is accepted and ignored (adaptive pooling)."""
    return MobileNetV2Classifier(num_classes, in_channels)
