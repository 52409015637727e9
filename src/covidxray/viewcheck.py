"""Frontal or lateral? A small network that says whether a chest X-ray is a lateral view.

The classifiers of this package are for frontal (PA / AP) chest X-rays. The lung-field check of the input guard
(:mod:`covidxray.segmentation.masks`) flags about 60 % of the lateral views of covid-chestxray-dataset: the
shipped segmenter often finds two balanced "lung fields" in a lateral view too. This check looks at the whole
image instead: a four-layer CNN (:func:`build_view_net`, ~15k parameters) on a 64 x 64 equalised thumbnail
(:func:`view_input`), trained by ``tools/train_view_check.py`` on covid-chestxray-dataset's lateral views against
frontal X-rays of the same collection and of the Radiography Database and Kermany (all the lateral views at hand
are in that one collection: its frontal images are negatives so that the collection itself tells nothing), and
run with ONNX Runtime (no torch at prediction time). Its patient-grouped cross-validation figures and the
threshold chosen on them are in ``default_view/config.json`` (``cv``) and BENCHMARKS.md ("Input guard").

An image whose lateral probability reaches the threshold gets the guard warning of :func:`view_warning`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from covidxray.onnxrt import cpu_session, embedded_config

VIEW_SIZE = 64
DEFAULT_DIR = Path(__file__).with_name("default_view")
ONNX_FILE = "model.onnx"
CONFIG_FILE = "config.json"
ONNX_CONFIG_KEY = "covidxray.view_check"
INPUT_NAME, OUTPUT_NAME = "image", "p_lateral"


class ViewCheckLoadError(RuntimeError):
    """The view check's files are missing or unreadable."""


def view_input(pixels: np.ndarray) -> np.ndarray:
    """A grayscale float image (H, W) in [0, 1] -> the check's input (S, S) float32 in [0, 1]: 8-bit, resized
    (bilinear) to S = 64, histogram-equalised."""
    a = np.asarray(pixels, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(
            f"the view check takes a 2-D grayscale image (H, W) in [0, 1], got an array of shape {a.shape}: "
            "decode it with covidxray.imageio.load_image"
        )
    a = np.clip(a, 0.0, 1.0)
    im = Image.fromarray(np.round(a * 255).astype(np.uint8))
    im = ImageOps.equalize(im.resize((VIEW_SIZE, VIEW_SIZE), Image.Resampling.BILINEAR))
    return np.asarray(im, dtype=np.float32) / 255.0


def build_view_net():
    """The check's network (torch; used by the training tool and its tests, not at prediction time)."""
    from torch import nn

    def block(c_in: int, c_out: int) -> list:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *block(1, 8), nn.MaxPool2d(2),
        *block(8, 16), nn.MaxPool2d(2),
        *block(16, 32), nn.MaxPool2d(2),
        *block(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1),
    )  # fmt: skip


@dataclass(frozen=True)
class ViewFacts:
    """One image's lateral probability and the threshold it is judged against (``lateral``: the unrounded
    probability reached it, as in the cross-validation that chose the threshold)."""

    lateral_probability: float
    threshold: float
    lateral: bool


def view_warning(view: ViewFacts) -> str:
    """The guard's warning for an image the check calls a lateral view, with the numbers behind it."""
    return (
        f"looks like a lateral view (p(lateral) {view.lateral_probability:.2f} >= {view.threshold:.2f}): the "
        "model is for frontal (PA / AP) chest X-rays"
    )


class ViewCheck:
    """The view check of a folder (``model.onnx`` with its config in the ONNX metadata), run with ONNX Runtime."""

    def __init__(self, path: str | os.PathLike | None = None, threads: int = 2):
        p = Path(path) if path is not None else DEFAULT_DIR
        onnx_path = p / ONNX_FILE if p.is_dir() else p
        if not onnx_path.is_file():
            raise ViewCheckLoadError(
                f"{onnx_path}: no view check here (make one with tools/train_view_check.py)"
            )
        self.session = cpu_session(onnx_path, threads, ViewCheckLoadError)
        self.config: dict[str, Any]
        self.config, _ = embedded_config(
            self.session, ONNX_CONFIG_KEY, onnx_path, ViewCheckLoadError, "not a covidxray view check"
        )
        self.threshold = float(self.config["threshold"])
        self.source = str(onnx_path)

    @property
    def version(self) -> str:
        return str(self.config.get("version", ""))

    def lateral_probability(self, images: list[np.ndarray]) -> np.ndarray:
        """p(lateral) of grayscale float images (H, W) in [0, 1], one per image."""
        if not images:
            return np.zeros(0, dtype=np.float32)
        x = np.stack([view_input(p) for p in images])[:, None]
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0][
            :, 0
        ]

    def facts(self, images: list[np.ndarray]) -> list[ViewFacts]:
        return [
            ViewFacts(round(float(p), 4), self.threshold, bool(p >= self.threshold))
            for p in self.lateral_probability(images)
        ]


_DEFAULT: dict[int, ViewCheck] = {}


def default_view_check(threads: int = 2) -> ViewCheck:
    """The shipped view check, loaded once per process and thread count."""
    key = max(1, int(threads))
    if key not in _DEFAULT:
        _DEFAULT[key] = ViewCheck(None, threads=key)
    return _DEFAULT[key]


def default_view_facts() -> dict[str, Any] | None:
    """Model-card facts of the shipped view check (version, threshold, cross-validation), None when missing."""
    try:
        c = json.loads((DEFAULT_DIR / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {k: c.get(k) for k in ("version", "threshold", "input_size", "cv", "data")}
