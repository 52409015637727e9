"""Architectures: ``create_model(name, num_classes, in_channels)``; see :mod:`covidxray.models.registry`."""

from covidxray.models.backbone import BackboneClassifier
from covidxray.models.base import Classifier, XRayNet
from covidxray.models.registry import create_model, list_models, register_model
from covidxray.models.weights import LoadReport, PretrainedWeightsError, load_pretrained

__all__ = [
    "BackboneClassifier",
    "Classifier",
    "LoadReport",
    "PretrainedWeightsError",
    "XRayNet",
    "create_model",
    "list_models",
    "load_pretrained",
    "register_model",
]
