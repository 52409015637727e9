"""Using a trained lung segmenter: ``load_segmenter(backend="onnx"|"torch").predict(image) -> mask``.

A segmenter folder holds ``model.safetensors`` + ``config.json`` (torch) and ``model.onnx`` (ONNX Runtime; its
metadata carries the same config). The default one ships in the package (``covidxray/default_segmenter``).
Its input preprocessing is a :class:`covidxray.preprocess.Preprocessing` stored in the config, so the image goes
through the project's one preprocessing definition. The ONNX backend never imports torch.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from covidxray.imageio import LoadedImage, load_image
from covidxray.onnxrt import cpu_session, embedded_config
from covidxray.preprocess import Preprocessing
from covidxray.segmentation.masks import LungFacts, clean_mask, lung_facts

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "default_segmenter"
CONFIG_FILE, WEIGHTS_FILE, ONNX_FILE = "config.json", "model.safetensors", "model.onnx"
ONNX_CONFIG_KEY = "covidxray.segmenter"
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
OUTPUTS = ("lungs", "heart", "lungs_behind_heart")

SegmenterInput = Union[str, os.PathLike, np.ndarray, LoadedImage]  # noqa: UP007


class SegmenterLoadError(RuntimeError):
    """The segmenter files are missing or unreadable."""


@dataclass(frozen=True)
class LungSegmentation:
    """One image's lung fields at the image's own size."""

    mask: np.ndarray  # bool (H, W), SCR convention (heart excluded)
    facts: LungFacts

    def png_array(self) -> np.ndarray:
        """uint8 (H, W): 255 lung, 0 elsewhere."""
        return self.mask.astype(np.uint8) * 255


def _pixels(image: SegmenterInput) -> np.ndarray:
    """Grayscale float32 (H, W) in [0, 1] from a path, a LoadedImage or a 2-D array (uint8/uint16/float)."""
    if isinstance(image, LoadedImage):
        return image.pixels
    if isinstance(image, (str, os.PathLike)):
        return load_image(image).pixels
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = np.asarray(Image.fromarray(a[..., :3].astype(np.uint8)).convert("L"))
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got an array of shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    a = a.astype(np.float32)
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"float image values span [{a.min():.3g}, {a.max():.3g}], expected [0, 1]")
    return a


class _OnnxRunner:
    name = "onnx"

    def __init__(self, path: Path, threads: int):
        self.session = cpu_session(path, threads, SegmenterLoadError)
        self.config, _ = embedded_config(
            self.session, ONNX_CONFIG_KEY, path, SegmenterLoadError, "not a covidxray lung segmenter"
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


class _TorchRunner:
    name = "torch"

    def __init__(self, folder: Path, threads: int | None):
        import torch
        from safetensors.torch import load_file

        from covidxray.segmentation.net import LungSegNet, SegProbabilities

        try:
            self.config = json.loads((folder / CONFIG_FILE).read_text())
            net = LungSegNet(**self.config["architecture"], **_norm(self.config))
            net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise SegmenterLoadError(f"{folder}: cannot load the lung segmenter: {exc}") from exc
        self.graph = SegProbabilities(net).eval()
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.graph(self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _norm(config: dict) -> dict:
    p = config["preprocessing"]
    return {"mean": p.get("mean", 0.5), "std": p.get("std", 0.25)}


class Segmenter:
    """Lung fields of chest X-rays. ``predict`` returns a 0/255 mask the size of the input image."""

    def __init__(self, runner: Any, source: str):
        self._run = runner
        self.config: dict[str, Any] = runner.config
        self.backend = runner.name
        self.source = source
        self.preprocessing = Preprocessing.from_dict(self.config["preprocessing"])
        self.threshold = float(self.config.get("threshold", 0.5))

    @property
    def version(self) -> str:
        return str(self.config.get("version", "lung-segmenter"))

    def probabilities(self, canonical: np.ndarray) -> np.ndarray:
        """Canonical uint8 images (N, S, S) -> sigmoid maps (N, 3, S, S) in the order of ``OUTPUTS``."""
        return self._run(self.preprocessing.to_input(canonical))

    def lung_probability(self, pixels: np.ndarray) -> np.ndarray:
        """Lung probability (S, S) of one grayscale float image, at the segmenter's input size."""
        return self.probabilities(self.preprocessing.canonical(pixels)[None])[0, 0]

    def segment_many(self, images: Sequence[SegmenterInput], batch_size: int = 16) -> list[LungSegmentation]:
        """Segment images (paths, arrays or LoadedImages); each mask at its own image's size."""
        out: list[LungSegmentation] = []
        for i in range(0, len(images), batch_size):
            pix = [_pixels(im) for im in images[i : i + batch_size]]
            probs = self.probabilities(np.stack([self.preprocessing.canonical(p) for p in pix]))[:, 0]
            out += [self._finish(pr, p.shape) for pr, p in zip(probs, pix, strict=True)]
        return out

    def segment(self, image: SegmenterInput) -> LungSegmentation:
        """Lung mask and its plausibility facts for one image."""
        return self.segment_many([image])[0]

    def lung_mask(self, pixels: np.ndarray) -> np.ndarray:
        """Boolean lung mask (H, W) of a grayscale float image: the mask function of ``resize: lungcrop``."""
        return self.segment(pixels).mask

    def predict(self, image: SegmenterInput) -> np.ndarray:
        """uint8 mask (H, W), 255 = lung fields (SCR convention: heart excluded), same size as the image."""
        return self.segment(image).png_array()

    def _finish(self, prob: np.ndarray, shape: tuple[int, int]) -> LungSegmentation:
        h, w = shape
        full = np.asarray(
            Image.fromarray(prob.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
        )
        mask = clean_mask(full, self.threshold)
        return LungSegmentation(mask, lung_facts(mask))


def load_segmenter(
    path: str | os.PathLike | None = None, backend: str = "onnx", threads: int = 2
) -> Segmenter:
    """The lung segmenter in ``path`` (a folder, or a ``.onnx`` file), default: the one shipped in the package.

    ``backend="onnx"`` (default) runs ONNX Runtime without importing torch; ``"torch"`` loads the safetensors.
    """
    if backend not in ("onnx", "torch"):
        raise ValueError(f"backend must be 'onnx' or 'torch', got {backend!r}")
    p = Path(path) if path is not None else DEFAULT_DIR
    if not p.exists():
        raise SegmenterLoadError(f"{p}: no such lung segmenter (a folder from 'covidxray segment train')")
    if backend == "onnx":
        onnx_path = p / ONNX_FILE if p.is_dir() else p
        if not onnx_path.is_file():
            raise SegmenterLoadError(
                f"{onnx_path}: missing; export it with 'covidxray segment train' or use backend='torch'"
            )
        return Segmenter(_OnnxRunner(onnx_path, threads), str(onnx_path))
    if not p.is_dir():
        raise SegmenterLoadError(
            f"{p}: the torch backend needs the segmenter folder (model.safetensors + config.json)"
        )
    return Segmenter(_TorchRunner(p, threads), str(p))


def default_segmenter_version() -> str:
    """The shipped segmenter's version (``lung-unet@<sha256 prefix>``), read from its config without loading it."""
    try:
        return str(json.loads((DEFAULT_DIR / CONFIG_FILE).read_text())["version"])
    except (OSError, KeyError, ValueError) as exc:
        raise SegmenterLoadError(
            f"{DEFAULT_DIR}: the shipped lung segmenter is missing or broken: {exc}"
        ) from exc


def segmenter_facts(config: dict[str, Any]) -> dict[str, Any]:
    """Model-card facts of a segmenter config: version, input size, held-out Dice per source."""
    test = (config.get("metrics") or {}).get("test", {})
    dice = {}
    for src, m in test.items():
        key = "lungs" if "lungs" in m else "lungs_behind_heart"
        if key in m:
            dice[src] = m[key]["mean"]
    return {
        "version": config.get("version", ""),
        "convention": config.get("convention", ""),
        "image_size": (config.get("preprocessing") or {}).get("image_size"),
        "test_dice": dice,
    }


def default_segmenter_facts() -> dict[str, Any] | None:
    """:func:`segmenter_facts` of the shipped segmenter, None when it is missing."""
    try:
        return segmenter_facts(json.loads((DEFAULT_DIR / CONFIG_FILE).read_text()))
    except (OSError, ValueError):
        return None


_DEFAULT: dict[tuple[str, int], Segmenter] = {}


def default_segmenter(backend: str = "onnx", threads: int = 2) -> Segmenter:
    """The shipped segmenter, loaded once per process, backend and thread count.

    ``threads`` should match the caller's own compute threads: a one-thread predictor (a 1-CPU Ray actor, say)
    that segmented with two threads would oversubscribe its core.
    """
    key = (backend, max(1, int(threads)))
    if key not in _DEFAULT:
        _DEFAULT[key] = load_segmenter(None, backend=backend, threads=key[1])
    return _DEFAULT[key]


def lung_mask_fn(preprocessing: Preprocessing) -> Callable[[np.ndarray], np.ndarray] | None:
    """The lung-mask function ``preprocessing.canonical`` needs (``resize="lungcrop"``), else None.

    Always the shipped segmenter's ONNX, so the cache, training, evaluation, the CLI, the web app and the ONNX
    backend crop identically, with or without torch. Warns when the bundle recorded another segmenter version.
    """
    if not preprocessing.needs_lungs:
        return None
    seg = default_segmenter("onnx")
    if preprocessing.lung_segmenter and preprocessing.lung_segmenter != seg.version:
        warnings.warn(
            f"this model's lung crops were made with segmenter {preprocessing.lung_segmenter}, but the installed "
            f"one is {seg.version}: crops (and predictions) may differ from training",
            stacklevel=2,
        )
    return seg.lung_mask
