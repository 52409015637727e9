"""Model registry: ``create_model("resnet18", num_classes=3, in_channels=1)``, as in timm.

Each architecture family lives in its own module and registers its builders with :func:`register_model`.
Every built network is a :class:`covidxray.models.base.Classifier`: ``features(x)`` gives the penultimate
vector, ``head`` maps it to logits, ``gradcam_layer`` names the module Grad-CAM hooks.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_FAMILY_MODULES = ("seed_cnns", "monai_nets", "vgg", "mobilenet")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _import_families() -> None:
    import importlib

    for mod in _FAMILY_MODULES:
        importlib.import_module(f"covidxray.models.{mod}")


def list_models() -> list[str]:
    _import_families()
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 3, in_channels: int = 1, **kwargs) -> nn.Module:
    """Build a registered architecture with a fresh head of ``num_classes`` outputs (1 = one sigmoid logit)."""
    _import_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
