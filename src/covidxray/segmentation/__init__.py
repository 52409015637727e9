"""Lung fields of chest X-rays: a small U-Net trained here from scratch, shipped in the package.

``load_segmenter(backend="onnx"|"torch").predict(image) -> uint8 mask (H, W)``, 255 = lung fields in the SCR
convention (heart excluded), the same size as the image. Importing this package imports nothing heavy (no torch,
no SciPy, no ONNX Runtime): the names below load their module on first use, so ``covidxray --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "LungFacts": "masks",
    "clean_mask": "masks",
    "dice": "masks",
    "lung_facts": "masks",
    "LungSegmentation": "segmenter",
    "Segmenter": "segmenter",
    "SegmenterLoadError": "segmenter",
    "default_segmenter": "segmenter",
    "load_segmenter": "segmenter",
    "lung_mask_fn": "segmenter",
}

__all__ = [*sorted(_WHERE), "lung_box"]


def __getattr__(name: str) -> Any:
    if name == "lung_box":
        from covidxray.preprocess import lung_box

        return lung_box
    if name in _WHERE:
        return getattr(importlib.import_module(f"covidxray.segmentation.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'covidxray.segmentation' has no attribute {name!r}")
