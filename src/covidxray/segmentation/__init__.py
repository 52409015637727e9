"""Lung fields of chest X-rays: a small U-Net trained here from scratch, shipped in the package.

``load_segmenter(backend="onnx"|"torch").predict(image) -> uint8 mask (H, W)``, 255 = lung fields in the SCR
convention (heart excluded), the same size as the image. Importing this package does not import torch.
"""

from covidxray.preprocess import lung_box
from covidxray.segmentation.masks import LungFacts, clean_mask, dice, lung_facts
from covidxray.segmentation.segmenter import (
    LungSegmentation,
    Segmenter,
    SegmenterLoadError,
    default_segmenter,
    load_segmenter,
    lung_mask_fn,
)

__all__ = [
    "LungFacts",
    "LungSegmentation",
    "Segmenter",
    "SegmenterLoadError",
    "clean_mask",
    "default_segmenter",
    "dice",
    "load_segmenter",
    "lung_box",
    "lung_mask_fn",
    "lung_facts",
]
