"""Training: ``train(TrainConfig(manifest=..., model=...)) -> run directory`` (see :mod:`.trainer`)."""

from covidxray.training.config import TrainConfig
from covidxray.training.trainer import resume, train

__all__ = ["TrainConfig", "resume", "train"]
