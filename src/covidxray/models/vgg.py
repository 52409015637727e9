"""VGG-16 in plain torch, with torchvision's module layout.

:class:`VGGBackbone` has torchvision's ``features`` / ``avgpool`` / ``classifier`` modules and state-dict keys
(``features.N``, ``classifier.0``, ``classifier.3``), so an ImageNet state dict saved by
``torchvision.models.vgg16`` loads with :func:`covidxray.models.weights.load_pretrained`; its 1000-class
``classifier.6`` is dropped for our ``head``. Differences from torchvision: ReLUs are not in-place (Grad-CAM
hooks one), and the final linear layer is the classifier's ``head``.
"""

from __future__ import annotations

import torch
from torch import nn

from covidxray.models.backbone import BackboneClassifier
from covidxray.models.registry import register_model

VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGGBackbone(nn.Module):
    """3x3 convs + ReLU with max-pools, 7x7 adaptive average pool, two 4096-unit FC layers (ReLU, dropout)."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.last_relu = max(i for i, m in enumerate(layers) if isinstance(m, nn.ReLU))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("vgg16")
def vgg16(num_classes: int = 3, in_channels: int = 1, image_size: int | None = None) -> BackboneClassifier:
    """VGG-16 (configuration D, no batch norm); 4096-d features; Grad-CAM hooks the ReLU after the last conv.

    138 M parameters, ~15.5 GFLOPs per 224 px image: by far the slowest family here on a CPU.
    ``image_size`` is accepted and ignored (adaptive pooling).
    """
    backbone = VGGBackbone(VGG16_CFG, in_channels=in_channels)
    return BackboneClassifier(
        backbone, 4096, num_classes, f"backbone.features.{backbone.last_relu}", ("classifier.6.",)
    )
