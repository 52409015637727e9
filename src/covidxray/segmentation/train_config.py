"""The lung segmenter's training settings (no torch here, so the CLI parser can show the defaults cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_ARCH = {"channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2], "num_res_units": 1}


@dataclass
class SegTrainConfig:
    """``covidxray segment train`` settings; saved in the segmenter's config.json."""

    root: str = "../shared/data"
    out: str = "runs/segmenter"
    image_size: int = 160
    epochs: int = 36
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1
    jsrt_repeat: int = 1  # JSRT images per epoch = repeat x train images (they alone teach the heart)
    arch: dict = field(default_factory=lambda: dict(DEFAULT_ARCH))
    max_images: int = 0  # > 0: use at most this many pairs per source (quick runs and tests)
