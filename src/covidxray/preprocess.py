"""The one preprocessing definition, shared by the cache, training, evaluation, the CLI, the web app and ONNX.

A decoded grayscale image (see :mod:`covidxray.imageio`) goes through two steps:

1. :meth:`Preprocessing.canonical` -- geometry and intensity, deterministic, stored as uint8 in the cache:
   resize to ``image_size`` square, then an intensity normalisation that removes the collections' different
   brightness/contrast habits (a known source shortcut). ``resize="lungcrop"`` first crops the image to its lung
   fields' bounding box plus ``lungcrop_margin``: the caller passes the lung mask (or a function computing it,
   :func:`covidxray.segmentation.lung_mask_fn` -- the shipped segmenter's ONNX), so this module stays NumPy-only.
2. :meth:`Preprocessing.to_input` -- uint8 -> float32 in [0, 1] (the seeds' ``rescale=1/255``), repeated to
   ``channels``. Mean/std normalisation happens *inside* the saved network, so a bundle or an ONNX file takes
   [0, 1] images and nothing else has to be remembered.

Test-time augmentation (TTA) lives here too: :meth:`Preprocessing.view_inputs` turns canonical images into the
model inputs of a fixed, deterministic list of views (:data:`TTA_VIEWS`), and :func:`mean_over_views` averages
what the model says about them. The predictor (torch and ONNX) and evaluation share both, so a TTA prediction is
the same whichever path computes it.

The whole definition travels in every saved model (``config.json`` and ONNX metadata) -- never re-typed.
Only NumPy and Pillow are used here so the ONNX backend runs without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Union

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from covidxray.about import __version__

RESIZE_MODES = ("squash", "pad", "crop", "lungcrop", "lungmask")
# resize == "lungmask": the lung fields are widened by this share of the side (S) before masking
LUNGMASK_DILATION = 0.04
# A lung mask (bool (H, W), the image's size) or a function computing it from the grayscale float image.
LungMask = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]  # noqa: UP007
MIN_LUNG_BOX = 0.2  # a lung box narrower/shorter than this share of the image is not trusted: no crop
# equalize_lungs (resize lungcrop / lungmask only): the equalisation's lookup table comes from the lung fields'
# histogram alone and is applied to the whole crop, so how much mediastinum, soft tissue and border a crop holds
# does not move the lungs' grey levels
INTENSITY_MODES = ("equalize", "equalize_lungs", "percentile", "minmax", "none")
CHANNELS = (1, 3)  # grey, or grey repeated for three-channel (ImageNet) backbones

# The test-time views, in the order ``--tta N`` takes them (the first N). Mild on purpose, inside what the
# ``light`` training augmentation shows a model: zoom +-10 %, a 5 % shift, gamma 0.8 / 1.25. The horizontal flip
# comes last: the heart sits on the left in nearly every chest X-ray, so a mirrored one is not a real image.
TTA_VIEWS = (
    "identity",
    "zoom_in",  # the central 90 % resized to the full size
    "gamma_0.8",  # x ** 0.8 (brighter mid-tones)
    "gamma_1.25",  # x ** 1.25 (darker mid-tones)
    "zoom_out",  # the image shrunk to 90 %, edges repeated outward
    "shift_up_left",  # a 95 % crop at the top left resized to the full size
    "shift_down_right",  # a 95 % crop at the bottom right resized to the full size
    "hflip",  # mirrored left-right
)
MAX_TTA_VIEWS = len(TTA_VIEWS)


def tta_views(n: int) -> tuple[str, ...]:
    """The names of the first ``n`` test-time views (``n == 1``: the identity alone, i.e. no TTA)."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_TTA_VIEWS:
        raise ValueError(f"the number of TTA views must be an integer from 1 to {MAX_TTA_VIEWS}, got {n!r}")
    return TTA_VIEWS[:n]


def mean_over_views(outputs: np.ndarray, n: int) -> np.ndarray:
    """Outputs of :meth:`Preprocessing.view_inputs` ((N * n, K), image-major) -> their mean per image (N, K)."""
    if len(outputs) % n:
        raise ValueError(f"{len(outputs)} outputs are not a whole number of {n}-view groups")
    return outputs.reshape(len(outputs) // n, n, *outputs.shape[1:]).mean(axis=1)


def _view(img: Image.Image, name: str) -> tuple[Image.Image, float]:
    """One canonical image (PIL ``L``) -> its geometric view and the gamma to apply after ``to_input``."""
    s = img.width
    bilinear = Image.Resampling.BILINEAR
    if name == "identity":
        return img, 1.0
    if name.startswith("gamma_"):
        return img, float(name.split("_", 1)[1])
    if name == "hflip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 1.0
    if name == "zoom_in":
        m = 0.05 * s
        return img.resize((s, s), bilinear, box=(m, m, s - m, s - m)), 1.0
    if name == "zoom_out":
        inner = max(1, round(0.9 * s))
        small = np.asarray(img.resize((inner, inner), bilinear))
        lo = (s - inner) // 2
        return Image.fromarray(np.pad(small, ((lo, s - inner - lo),) * 2, mode="edge")), 1.0
    if name in ("shift_up_left", "shift_down_right"):
        c = 0.95 * s
        box = (0, 0, c, c) if name == "shift_up_left" else (s - c, s - c, s, s)
        return img.resize((s, s), bilinear, box=box), 1.0
    raise ValueError(f"unknown TTA view {name!r}; the views are {TTA_VIEWS}")


class NewerPreprocessingError(ValueError):
    """A saved preprocessing this covidxray does not know (a setting or a mode from a newer version)."""


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
    # resize == "lungcrop" / "lungmask": the lung box is widened by this share of its size on each side, and
    # lung_segmenter is the version of the segmenter whose masks define it
    lungcrop_margin: float = 0.1
    lung_segmenter: str = ""

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if self.intensity == "equalize_lungs" and not self.needs_lungs:
            raise ValueError(
                f"intensity 'equalize_lungs' needs the lung fields: use it with resize 'lungcrop' or 'lungmask', "
                f"not {self.resize!r}"
            )
        if not 16 <= int(self.image_size) <= 2048:
            raise ValueError(f"image_size must be between 16 and 2048, got {self.image_size}")
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {self.channels}")
        if not 0.0 <= float(self.lungcrop_margin) <= 0.5:
            raise ValueError(f"lungcrop_margin must be between 0 and 0.5, got {self.lungcrop_margin}")

    @property
    def needs_lungs(self) -> bool:
        """True when :meth:`canonical` needs the image's lung mask (``resize`` ``lungcrop`` or ``lungmask``)."""
        return self.resize in ("lungcrop", "lungmask")

    # -- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """The preprocessing a saved model names. The dataclass fields are the one list of known settings:
        a setting or a resize/intensity mode this version does not know raises :class:`NewerPreprocessingError`
        rather than being dropped (the model would silently see differently preprocessed images)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        modes = {"resize": RESIZE_MODES, "intensity": INTENSITY_MODES}
        unknown += [f"{k}={d[k]!r}" for k, allowed in modes.items() if k in d and d[k] not in allowed]
        if unknown:
            raise NewerPreprocessingError(
                f"preprocessing settings {unknown} are not supported by covidxray {__version__}, which knows "
                f"{sorted(known)} (resize {list(RESIZE_MODES)}, intensity {list(INTENSITY_MODES)}); the model "
                "was saved by a newer covidxray: upgrade covidxray, or load its ONNX export with onnxruntime"
            )
        kw = dict(d)
        if "percentiles" in kw:
            kw["percentiles"] = tuple(kw["percentiles"])
        return cls(**kw)

    def cache_key(self) -> dict:
        """The fields that change the cached uint8 image (mean/std/channels do not)."""
        keys = ["image_size", "resize", "intensity", "percentiles"]
        if self.needs_lungs:
            keys += ["lungcrop_margin", "lung_segmenter"]
        return {k: v for k, v in self.to_dict().items() if k in keys}

    # -- step 1: geometry + intensity -> uint8 -------------------------------------------------------------
    def canonical(self, pixels: np.ndarray, lung_mask: LungMask | None = None) -> np.ndarray:
        """Grayscale float image in [0, 1] (H, W) -> uint8 (S, S).

        ``lung_mask`` is needed for ``resize`` ``lungcrop`` / ``lungmask`` only (ignored otherwise). ``lungmask``
        crops like ``lungcrop``, then blacks out everything outside the lung fields (widened by
        :data:`LUNGMASK_DILATION`); the intensity normalisation then sees the lung fields only.
        """
        if pixels.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
        s = int(self.image_size)
        mask = self._lung_mask(pixels, lung_mask)
        box = lung_box(mask, self.lungcrop_margin) if mask is not None else None
        img = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        img = self._fit(img, box, Image.Resampling.BILINEAR)
        keep = None  # lungmask: the widened lung fields in the canonical frame ("L", 255 inside)
        if self.intensity == "equalize_lungs" and self.resize == "lungcrop" and box is not None:
            lungs = self._fit_mask(mask, box)
            # the lungs' inside (2 px in from the edge, where resizing blends lung with what surrounds it)
            inner = lungs.filter(ImageFilter.MinFilter(5))
            lungs = inner if np.asarray(inner).any() else lungs
            if np.asarray(lungs).any():  # the histogram of the lungs, the lookup table applied everywhere
                return np.asarray(ImageOps.equalize(img, mask=lungs), dtype=np.uint8)
        if self.resize == "lungmask" and box is not None:
            k = 2 * max(1, round(LUNGMASK_DILATION * s)) + 1
            keep = self._fit_mask(mask, box).filter(ImageFilter.MaxFilter(k))
        inside = None if keep is None else np.asarray(keep) > 127
        if self.intensity in ("equalize", "equalize_lungs"):  # lungmask: keep is the lungs; no box: plain
            out = np.asarray(ImageOps.equalize(img, mask=keep), dtype=np.uint8)
            return out if inside is None else np.where(inside, out, 0).astype(np.uint8)
        arr = np.asarray(img, dtype=np.float32)
        if inside is not None:
            arr = np.where(inside, arr, 0.0)
        if self.intensity == "percentile":
            lo, hi = np.percentile(arr if inside is None else arr[inside], self.percentiles)
        elif self.intensity == "minmax":
            lo, hi = float(arr.min()), float(arr.max())
        else:
            return arr.astype(np.uint8)
        if hi <= lo:
            return np.zeros((s, s), dtype=np.uint8)
        out = np.clip((arr - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
        return out if inside is None else np.where(inside, out, 0).astype(np.uint8)

    def _lung_mask(self, pixels: np.ndarray, lung_mask: LungMask | None) -> np.ndarray | None:
        """The image's lung mask when the resize mode needs one (computed if a function was given)."""
        if not self.needs_lungs:
            return None
        if lung_mask is None:
            raise ValueError(
                f"resize={self.resize!r} needs the image's lung mask: pass "
                "lung_mask=covidxray.segmentation.lung_mask_fn(preprocessing)"
            )
        return lung_mask(pixels) if callable(lung_mask) else lung_mask

    def crop_box(self, pixels: np.ndarray, lung_mask: LungMask | None) -> tuple[int, int, int, int] | None:
        """The lung crop (left, top, right, bottom) of ``resize`` ``lungcrop`` / ``lungmask``; None otherwise or
        when the mask gives no usable box (then the whole image is used)."""
        mask = self._lung_mask(pixels, lung_mask)
        return lung_box(mask, self.lungcrop_margin) if mask is not None else None

    def _fit(self, img: Image.Image, box: tuple[int, int, int, int] | None, resample) -> Image.Image:
        s = int(self.image_size)
        gap = 2.0 if resample != Image.Resampling.NEAREST else None
        if self.needs_lungs:
            return (img.crop(box) if box is not None else img).resize((s, s), resample, reducing_gap=gap)
        if self.resize == "squash":
            return img.resize((s, s), resample, reducing_gap=gap)
        if self.resize == "pad":
            return ImageOps.pad(img, (s, s), resample, color=0)
        return ImageOps.fit(img, (s, s), resample)

    def canonical_mask(self, mask: np.ndarray, lung_mask: LungMask | None = None) -> np.ndarray:
        """A boolean mask of the image (H, W) in the canonical frame (S, S): the same geometry as
        :meth:`canonical`, nearest neighbour (e.g. the lung fields, to measure where a heatmap falls)."""
        m = np.asarray(mask, dtype=bool)
        box = self.crop_box(m.astype(np.float32), lung_mask if lung_mask is not None else m)
        return np.asarray(self._fit_mask(m, box)) > 127

    def _fit_mask(self, mask: np.ndarray, box: tuple[int, int, int, int] | None) -> Image.Image:
        """A boolean mask (H, W) in the canonical frame: "L" image, 255 inside, nearest neighbour."""
        img = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L")
        return self._fit(img, box, Image.Resampling.NEAREST)

    # -- step 2: uint8 -> float input -----------------------------------------------------------------------
    def to_input(self, canonical: np.ndarray) -> np.ndarray:
        """uint8 (S, S) or (N, S, S) -> float32 (C, S, S) or (N, C, S, S) in [0, 1]."""
        x = canonical.astype(np.float32) / 255.0
        x = x[None] if x.ndim == 2 else x[:, None]
        if self.channels > 1:
            x = np.repeat(x, self.channels, axis=-3)
        return np.ascontiguousarray(x)

    def view_inputs(self, canonical: np.ndarray, n: int) -> np.ndarray:
        """Canonical uint8 images (N, S, S) -> model inputs of their first ``n`` TTA views, float32
        (N * n, C, S, S) in [0, 1], image-major (image 0's views first). ``n == 1`` is :meth:`to_input`."""
        views = tta_views(n)
        canonical = np.asarray(canonical)
        if n == 1:
            return self.to_input(canonical)
        out = []
        for c in canonical:
            img = Image.fromarray(c, mode="L")
            for name in views:
                v, gamma = _view(img, name)
                x = self.to_input(np.asarray(v, dtype=np.uint8))
                out.append(np.power(x, gamma, dtype=np.float32) if gamma != 1.0 else x)
        return np.ascontiguousarray(np.stack(out)) if out else self.to_input(canonical)

    def __call__(self, pixels: np.ndarray, lung_mask: LungMask | None = None) -> np.ndarray:
        """Grayscale float image (H, W) -> model input float32 (C, S, S)."""
        return self.to_input(self.canonical(pixels, lung_mask))


def lung_box(mask: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of a lung mask's pixels widened by ``margin`` x the box size on each side,
    clipped to the image; None when the mask is empty or its box is implausibly small (no crop then)."""
    m = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = m.shape
    if (bottom - top) < MIN_LUNG_BOX * h or (right - left) < MIN_LUNG_BOX * w:
        return None
    dy, dx = margin * (bottom - top), margin * (right - left)
    return (
        max(0, int(round(left - dx))),
        max(0, int(round(top - dy))),
        min(w, int(round(right + dx))),
        min(h, int(round(bottom + dy))),
    )
