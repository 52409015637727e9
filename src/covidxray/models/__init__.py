"""Architectures: ``create_model(name, num_classes, in_channels)``; see :mod:`covidxray.models.registry`."""

from covidxray.models.base import Classifier, XRayNet
from covidxray.models.registry import create_model, list_models, register_model

__all__ = ["Classifier", "XRayNet", "create_model", "list_models", "register_model"]
