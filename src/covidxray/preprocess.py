"""The one preprocessing definition, shared by the cache, training, evaluation, the CLI, the web app and ONNX.

A decoded grayscale image (see :mod:`covidxray.imageio`) goes through two steps:

1. :meth:`Preprocessing.canonical` -- geometry and intensity, deterministic, stored as uint8 in the cache:
   resize to ``image_size`` square, then an intensity normalisation that removes the collections' different
   brightness/contrast habits (a known source shortcut).
2. :meth:`Preprocessing.to_input` -- uint8 -> float32 in [0, 1] (the seeds' ``rescale=1/255``), repeated to
   ``channels``. Mean/std normalisation happens *inside* the saved network, so a bundle or an ONNX file takes
   [0, 1] images and nothing else has to be remembered.

The whole definition travels in every saved model (``config.json`` and ONNX metadata) -- never re-typed.
Only NumPy and Pillow are used here so the ONNX backend runs without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image, ImageOps

RESIZE_MODES = ("squash", "pad", "crop")
INTENSITY_MODES = ("equalize", "percentile", "minmax", "none")
CHANNELS = (1, 3)  # grey, or grey repeated for three-channel (ImageNet) backbones


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input. Defaults favour cross-source generalisation."""

    image_size: int = 224
    channels: int = 1
    resize: str = "squash"  # squash: every source to a square like the 224x224 collections already are
    intensity: str = "equalize"  # histogram equalisation: removes per-source brightness/contrast cues
    percentiles: tuple[float, float] = (1.0, 99.0)  # for intensity == "percentile"
    mean: float = 0.5  # applied inside the network (see covidxray.models.wrapper)
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if not 16 <= int(self.image_size) <= 2048:
            raise ValueError(f"image_size must be between 16 and 2048, got {self.image_size}")
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {self.channels}")

    # -- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "percentiles" in kw:
            kw["percentiles"] = tuple(kw["percentiles"])
        return cls(**kw)

    def cache_key(self) -> dict:
        """The fields that change the cached uint8 image (mean/std/channels do not)."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if k in ("image_size", "resize", "intensity", "percentiles")
        }

    # -- step 1: geometry + intensity -> uint8 -------------------------------------------------------------
    def canonical(self, pixels: np.ndarray) -> np.ndarray:
        """Grayscale float image in [0, 1] (H, W) -> uint8 (S, S)."""
        if pixels.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
        s = int(self.image_size)
        img = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        if self.resize == "squash":
            img = img.resize((s, s), Image.Resampling.BILINEAR, reducing_gap=2.0)
        elif self.resize == "pad":
            img = ImageOps.pad(img, (s, s), Image.Resampling.BILINEAR, color=0)
        else:
            img = ImageOps.fit(img, (s, s), Image.Resampling.BILINEAR)
        if self.intensity == "equalize":
            img = ImageOps.equalize(img)
            return np.asarray(img, dtype=np.uint8)
        arr = np.asarray(img, dtype=np.float32)
        if self.intensity == "percentile":
            lo, hi = np.percentile(arr, self.percentiles)
        elif self.intensity == "minmax":
            lo, hi = float(arr.min()), float(arr.max())
        else:
            return arr.astype(np.uint8)
        if hi <= lo:
            return np.zeros((s, s), dtype=np.uint8)
        return np.clip((arr - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)

    # -- step 2: uint8 -> float input -----------------------------------------------------------------------
    def to_input(self, canonical: np.ndarray) -> np.ndarray:
        """uint8 (S, S) or (N, S, S) -> float32 (C, S, S) or (N, C, S, S) in [0, 1]."""
        x = canonical.astype(np.float32) / 255.0
        x = x[None] if x.ndim == 2 else x[:, None]
        if self.channels > 1:
            x = np.repeat(x, self.channels, axis=-3)
        return np.ascontiguousarray(x)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Grayscale float image (H, W) -> model input float32 (C, S, S)."""
        return self.to_input(self.canonical(pixels))
