"""MONAI backbones: DenseNet-121, ResNet-18/50 and EfficientNet-B0, as covidxray classifiers.

Each wraps the MONAI network as ``backbone`` with its classification layer removed, and adds a fresh
``head`` (``nn.Linear``). Nothing is downloaded (``pretrained=False``); ImageNet or chest X-ray weights come
from a local file through :func:`covidxray.models.weights.load_pretrained`, whose keys are matched against
the MONAI network's own names (``backbone_prefix``). All are size-agnostic (adaptive pooling): ``image_size``
is accepted for a uniform call signature and ignored.
"""

from __future__ import annotations

import copy

import torch
from monai.networks import nets
from torch import nn

from covidxray.models.backbone import BackboneClassifier
from covidxray.models.registry import register_model


@register_model("densenet121")
def densenet121(
    num_classes: int = 3, in_channels: int = 1, image_size: int | None = None
) -> BackboneClassifier:
    """MONAI ``DenseNet121`` (2D); features are the 1024-d pooled vector, Grad-CAM hooks ``class_layers.relu``."""
    net = nets.DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1, pretrained=False)
    net.class_layers.out = nn.Identity()
    return BackboneClassifier(net, 1024, num_classes, "backbone.class_layers.relu", ("class_layers.out.",))


def _resnet(builder, num_features: int, num_classes: int, in_channels: int) -> BackboneClassifier:
    # torchvision's stem (7x7 stride-2 conv, max-pool) and bias-free downsampling convs, so the key names and
    # shapes match an ImageNet ResNet state dict (whose ``fc`` is dropped).
    net = builder(
        pretrained=False,
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        feed_forward=False,
        bias_downsample=False,
        shortcut_type="B",
    )
    return BackboneClassifier(net, num_features, num_classes, "backbone.layer4", ("fc.",))


@register_model("resnet18")
def resnet18(num_classes: int = 3, in_channels: int = 1, image_size: int | None = None) -> BackboneClassifier:
    """MONAI ``resnet18`` with torchvision's stem; 512-d features, Grad-CAM hooks ``layer4``."""
    return _resnet(nets.resnet18, 512, num_classes, in_channels)


@register_model("resnet50")
def resnet50(num_classes: int = 3, in_channels: int = 1, image_size: int | None = None) -> BackboneClassifier:
    """MONAI ``resnet50`` with torchvision's stem; 2048-d features, Grad-CAM hooks ``layer4``."""
    return _resnet(nets.resnet50, 2048, num_classes, in_channels)


class EfficientNetClassifier(BackboneClassifier):
    """EfficientNet with its own final activation module (``head_act``).

    MONAI's EfficientNet applies one ``_swish`` module twice (stem and head), so hooking it for Grad-CAM would
    mix the two calls; ``features`` runs the same layers but ends in a separate copy that Grad-CAM can hook.
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int):
        super().__init__(backbone, num_features, num_classes, "head_act", ("_fc.",))
        self.head_act = copy.deepcopy(backbone._swish)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b._swish(b._bn0(b._conv_stem(b._conv_stem_padding(x))))
        x = b._blocks(x)
        x = self.head_act(b._bn1(b._conv_head(b._conv_head_padding(x))))
        return b._dropout(b._avg_pooling(x).flatten(start_dim=1))


@register_model("efficientnet_b0")
def efficientnet_b0(
    num_classes: int = 3, in_channels: int = 1, image_size: int | None = None
) -> EfficientNetClassifier:
    """MONAI ``EfficientNetBN("efficientnet-b0")``; 1280-d features, Grad-CAM hooks the head activation."""
    net = nets.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels)
    net._fc = nn.Identity()
    return EfficientNetClassifier(net, 1280, num_classes)
