"""The one image loader of covidxray: PNG (8/16-bit), JPEG/JFIF, DICOM, TIFF (8/16-bit), BMP, WebP and GIF to a
2-D grayscale float array in [0, 1].

Every part of the project (manifest building, the cache, training, evaluation, the CLI, the web app and the
ONNX backend) reads images through :func:`load_image`, so a file decodes the same way everywhere.

Memory is bounded before any pixel is decoded: an image whose header claims more than ``max_pixels`` pixels
(default :data:`MAX_PIXELS`, 50 Mpx) is refused with the reason ``too_large``, and one above
:data:`REDUCE_ABOVE_PIXELS` is decoded at a reduced scale (JPEG draft mode, else ``Image.reduce``) so the float
arrays never exceed ~16 Mpx. Every model input is far smaller, so this changes no prediction's inputs measurably.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 64  # images smaller than this on either side are rejected: no chest X-ray is that small
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}

MAX_PIXELS = 50_000_000  # default decoded-pixel cap: larger images are refused before decoding ("too_large")
REDUCE_ABOVE_PIXELS = 16_000_000  # larger images are decoded at 1/k scale to at most this many pixels

# Exit-code-friendly reason codes; the CLI maps them to documented exit codes.
REASONS = ("missing", "empty", "not_an_image", "truncated", "too_small", "too_large", "unsupported_dicom")

_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes of a file announce (``head``: at least 132 bytes when available).

    Returns "png", "jpeg", "dicom" (the "DICM" marker at byte 128), "tiff", "bmp", "webp", "gif" or None.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"  # JPEG and JFIF (.jfif) alike
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    return None


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
    original_size: tuple[int, int] | None = (
        None  # (width, height) in the file when decoded at a reduced scale
    )

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


def _decode_dicom(data: bytes, path, max_pixels: int | None = MAX_PIXELS) -> LoadedImage:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if max_pixels is not None and rows * cols * max(frames, 1) > max_pixels:
            raise _too_large(path, cols, rows * max(frames, 1), max_pixels)
        raw = ds.pixel_array
    except ImageLoadError:
        raise
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


def _too_large(path, width: int, height: int, max_pixels: int) -> ImageLoadError:
    return ImageLoadError(
        path,
        "too_large",
        f"image is {width}x{height} px ({width * height / 1e6:.1f} Mpx), above the limit of "
        f"{max_pixels / 1e6:g} Mpx decoded pixels",
        "export a smaller copy (a chest X-ray needs no more than a few thousand pixels on a side)",
    )


def _bomb(path, exc: Exception, max_pixels: int) -> ImageLoadError:
    m = re.search(r"\((\d+) pixels\)", str(exc))
    claimed = f" ({int(m.group(1)) / 1e6:.0f} Mpx)" if m else ""
    return ImageLoadError(
        path,
        "too_large",
        f"image header claims too many pixels{claimed}, above the limit of {max_pixels / 1e6:g} Mpx "
        "decoded pixels (a possible decompression bomb)",
        "export a smaller copy of the image",
    )


def _reduction(width: int, height: int) -> int:
    """The smallest integer factor k with (width / k) * (height / k) <= REDUCE_ABOVE_PIXELS."""
    if width * height <= REDUCE_ABOVE_PIXELS:
        return 1
    return math.ceil(math.sqrt(width * height / REDUCE_ABOVE_PIXELS))


def _colorfulness(rgb8: np.ndarray, rows: int = 512) -> float:
    """mean |R-G| + mean |G-B| of a uint8 (H, W, 3) array in [0, 2], in row blocks (no full-size float copy)."""
    rg = gb = 0
    for i in range(0, rgb8.shape[0], rows):
        block = rgb8[i : i + rows].astype(np.int16)
        rg += int(np.abs(block[..., 0] - block[..., 1]).sum(dtype=np.int64))
        gb += int(np.abs(block[..., 1] - block[..., 2]).sum(dtype=np.int64))
    n = rgb8.shape[0] * rgb8.shape[1] * 255.0
    return (rg + gb) / n if n else 0.0


def _decode_raster(data: bytes, path, max_pixels: int | None) -> LoadedImage:
    colour = 0.0
    original_size = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "unknown").lower()
            width, height = im.size  # from the header: nothing decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise _too_large(path, width, height, max_pixels)
            k = _reduction(width, height)
            if k > 1 and fmt == "jpeg":
                im.draft(im.mode, (math.ceil(width / k), math.ceil(height / k)))  # decode at 1/2, 1/4 or 1/8
            im.load()  # forces full decoding: truncated files fail here, not later
            if k > 1:
                original_size = (width, height)
                if im.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGBA" if im.mode in ("P", "PA") else "RGB")
                k = _reduction(*im.size)  # what is left after JPEG draft mode
                if k > 1:
                    im = im.reduce(k)
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.float32)
                bits = 16
                arr /= np.float32(65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0)
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
                if im.mode not in ("L", "1"):
                    colour = _colorfulness(np.asarray(im.convert("RGB")))
                arr = np.asarray(im.convert("L")).astype(np.float32) / np.float32(255.0)
                bits = 8
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc, max_pixels or MAX_PIXELS) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            path,
            "not_an_image",
            "not a readable PNG, JPEG, TIFF, BMP, WebP, GIF or DICOM image",
            "check the file is an image and not e.g. an HTML page or text saved with an image extension",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(
            path,
            "truncated",
            f"image data is truncated or corrupt: {exc}",
            "re-download or re-export the file",
        ) from exc
    return LoadedImage(
        arr.astype(np.float32, copy=False),
        "jpeg" if fmt == "mpo" else fmt,
        bits,
        mode,
        colour,
        original_size,
    )


def load_image_bytes(
    data: bytes, name: str = "<upload>", min_side: int = MIN_SIDE, max_pixels: int | None = MAX_PIXELS
) -> LoadedImage:
    """Decode image bytes (PNG, JPEG, DICOM, TIFF, BMP, WebP, GIF) to grayscale float32 in [0, 1].

    Images above ``max_pixels`` pixels (None: no cap of ours; Pillow's decompression-bomb limit still holds) are
    refused with the reason ``too_large`` before their pixels are decoded.
    """
    if len(data) == 0:
        raise ImageLoadError(name, "empty", "file is empty (0 bytes)", "the copy or upload did not complete")
    if _is_dicom(data, name):
        img = _decode_dicom(data, name, max_pixels)
    else:
        img = _decode_raster(data, name, max_pixels)
    check_size(name, img.pixels, min_side)
    return img


def load_image(
    path: str | os.PathLike, min_side: int = MIN_SIDE, max_pixels: int | None = MAX_PIXELS
) -> LoadedImage:
    """Load one image file as grayscale float32 in [0, 1]; raises :class:`ImageLoadError` with a reason."""
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(p, "missing", "file does not exist", "check the path")
    if p.is_dir():
        raise ImageLoadError(p, "not_an_image", "is a directory, not an image file", "pass a file")
    return load_image_bytes(p.read_bytes(), str(p), min_side=min_side, max_pixels=max_pixels)
