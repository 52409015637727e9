"""The one image loader of covidxray: PNG (8/16-bit), JPEG and DICOM to a 2-D grayscale float array in [0, 1].

Every part of the project (manifest building, the cache, training, evaluation, the CLI, the web app and the
ONNX backend) reads images through :func:`load_image`, so a file decodes the same way everywhere.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 64  # images smaller than this on either side are rejected: no chest X-ray is that small
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}

# Exit-code-friendly reason codes; the CLI maps them to documented exit codes.
REASONS = ("missing", "empty", "not_an_image", "truncated", "too_small", "unsupported_dicom")


class ImageLoadError(ValueError):
    """An image that cannot be used, with the file, a reason code and what to do about it."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str, hint: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        self.hint = hint
        msg = f"{self.path}: {detail}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: ``pixels`` is float32, shape (H, W), values in [0, 1], 0 = black (air)."""

    pixels: np.ndarray
    format: str  # "png", "jpeg", "dicom", ...
    bit_depth: int
    original_mode: str  # PIL mode or DICOM photometric interpretation
    colorfulness: float = 0.0  # mean |R-G| + |G-B| in [0, 2]; ~0 for X-rays, large for colour photographs

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def colorfulness(rgb: np.ndarray) -> float:
    """Mean |R-G| + |G-B| of an RGB image in [0, 1] (H, W, 3): ~0 for X-rays, large for colour photographs."""
    return float(np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean())


def check_size(path, arr: np.ndarray, min_side: int) -> None:
    """Raise a ``too_small`` :class:`ImageLoadError` when ``arr`` is under ``min_side`` pixels on a side."""
    h, w = arr.shape[:2]
    if min(h, w) < min_side:
        raise ImageLoadError(
            path,
            "too_small",
            f"image is {w}x{h} px, smaller than {min_side} px on a side",
            "a chest X-ray needs at least a few hundred pixels; use the original file, not a thumbnail",
        )


def _is_dicom(data: bytes, path: str) -> bool:
    return (len(data) > 132 and data[128:132] == b"DICM") or Path(path).suffix.lower() in DICOM_SUFFIXES


def _decode_dicom(data: bytes, path) -> LoadedImage:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types: missing pixel data, unknown transfer syntax, ...
        raise ImageLoadError(
            path,
            "unsupported_dicom",
            f"DICOM pixel data cannot be decoded: {exc}",
            "convert it to an uncompressed DICOM or a 16-bit PNG (e.g. with dcmdjpeg or gdcmconv)",
        ) from exc
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):
        raw = raw[..., :3].mean(axis=-1)
    elif raw.ndim != 2:
        raise ImageLoadError(
            path,
            "unsupported_dicom",
            f"DICOM holds an array of shape {raw.shape}, not one 2-D image",
            "export a single frame as a 2-D image",
        )
    arr = apply_modality_lut(raw, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds, prefer_lut=True).astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if (
        photometric == "MONOCHROME1"
    ):  # 0 = white in MONOCHROME1: invert so air is dark as in every other format
        arr = 1.0 - arr
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    return LoadedImage(arr.astype(np.float32), "dicom", bits, photometric)


def _decode_raster(data: bytes, path) -> LoadedImage:
    colour = 0.0
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "unknown").lower()
            im.load()  # forces full decoding: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                bits = 16
                arr = arr / (65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0)
            elif mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
                bits = 32
            else:
                if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                    # composite transparency on black: transparent pixels are background, not bright
                    im = im.convert("RGBA")
                    background = Image.new("RGBA", im.size, (0, 0, 0, 255))
                    im = Image.alpha_composite(background, im)
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                colour = colorfulness(rgb)
                arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
                bits = 8
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            path,
            "not_an_image",
            "not a readable PNG, JPEG or DICOM image",
            "check the file is an image and not e.g. an HTML page or text saved with an image extension",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(
            path,
            "truncated",
            f"image data is truncated or corrupt: {exc}",
            "re-download or re-export the file",
        ) from exc
    return LoadedImage(arr.astype(np.float32), "jpeg" if fmt == "mpo" else fmt, bits, mode, colour)


def load_image_bytes(data: bytes, name: str = "<upload>", min_side: int = MIN_SIDE) -> LoadedImage:
    """Decode image bytes (PNG, JPEG, DICOM, ...) to grayscale float32 in [0, 1]."""
    if len(data) == 0:
        raise ImageLoadError(name, "empty", "file is empty (0 bytes)", "the copy or upload did not complete")
    img = _decode_dicom(data, name) if _is_dicom(data, name) else _decode_raster(data, name)
    check_size(name, img.pixels, min_side)
    return img


def load_image(path: str | os.PathLike, min_side: int = MIN_SIDE) -> LoadedImage:
    """Load one image file as grayscale float32 in [0, 1]; raises :class:`ImageLoadError` with a reason."""
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(p, "missing", "file does not exist", "check the path")
    if p.is_dir():
        raise ImageLoadError(p, "not_an_image", "is a directory, not an image file", "pass a file")
    return load_image_bytes(p.read_bytes(), str(p), min_side=min_side)
