"""Training: ``train(TrainConfig(manifest=..., model=...)) -> run directory`` (see :mod:`.trainer`).

``train`` and ``resume`` are imported on first use, so ``covidxray.training.cli`` (and with it the whole
``covidxray`` command line) starts without importing torch.
"""

from covidxray.training.config import TrainConfig

__all__ = ["TrainConfig", "resume", "train"]


def __getattr__(name: str):
    if name in ("train", "resume"):
        from covidxray.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'covidxray.training' has no attribute {name!r}")
