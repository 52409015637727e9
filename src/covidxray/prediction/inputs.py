"""What the predictor accepts as one image: a path, encoded bytes, a NumPy array, a PIL image or a LoadedImage.

Everything becomes a :class:`covidxray.imageio.LoadedImage` (grayscale float32 in [0, 1]) through the project's
one loader, so a file predicted from the CLI, a notebook or the web app is decoded the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from covidxray.imageio import (
    MIN_SIDE,
    ImageLoadError,
    LoadedImage,
    check_size,
    colorfulness,
    load_image,
    load_image_bytes,
)

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image, LoadedImage]  # noqa: UP007


class UnsupportedInput(TypeError):
    """An object that is not an image of any accepted kind (a programming error, not a bad image)."""


def describe(item: Any) -> str | None:
    """The name a result carries: the path for files, None for in-memory images."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return None


def to_loaded_image(item: ImageInput, min_side: int = MIN_SIDE) -> LoadedImage:
    """Decode one input; raises :class:`ImageLoadError` (with a reason code) when it cannot be used."""
    if isinstance(item, LoadedImage):
        return item
    if isinstance(item, (str, os.PathLike)):
        return load_image(Path(item), min_side=min_side)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return load_image_bytes(bytes(item), "<bytes>", min_side=min_side)
    if isinstance(item, Image.Image):
        return _from_array(_pil_to_array(item), "<PIL image>", min_side)
    if isinstance(item, np.ndarray):
        return _from_array(item, "<array>", min_side)
    raise UnsupportedInput(
        f"cannot predict on a {type(item).__name__}: pass a file path, image bytes, a NumPy array "
        "(H, W) or (H, W, 3), a PIL image or a covidxray.imageio.LoadedImage"
    )


def _pil_to_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "RGB"):
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def _from_array(arr: np.ndarray, name: str, min_side: int) -> LoadedImage:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = _unit(a[..., :3], name)
        rgb8 = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
        gray = np.asarray(Image.fromarray(rgb8, mode="RGB").convert("L"), dtype=np.float32) / 255.0
        img = LoadedImage(gray, "array", 8, "RGB", colorfulness(rgb))
    elif a.ndim == 2:
        bits = 16 if a.dtype == np.uint16 else 8 if a.dtype == np.uint8 else 32
        img = LoadedImage(_unit(a, name), "array", bits, str(a.dtype))
    else:
        raise ImageLoadError(
            name,
            "not_an_image",
            f"array of shape {a.shape} is not one image",
            "pass a 2-D grayscale array (H, W) or an RGB array (H, W, 3)",
        )
    check_size(name, img.pixels, min_side)
    return img


def _unit(a: np.ndarray, name: str) -> np.ndarray:
    """Integer images scaled by their type's range; float images must already be in [0, 1]."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
    a = a.astype(np.float32)
    if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
        raise ImageLoadError(
            name,
            "not_an_image",
            f"float array values span [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}], expected [0, 1]",
            "scale it to [0, 1] or pass the uint8/uint16 array",
        )
    return a
