"""A PNG preview rendered from the decoded pixels, so every accepted format (DICOM too) shows in a browser."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from covidxray.segmentation.masks import draw_outline
from covidxray.segmentation.overlay import OUTLINE_COLOR


def render_preview(pixels: np.ndarray, max_side: int = 512, lung_mask: np.ndarray | None = None) -> bytes:
    """Grayscale float image in [0, 1] (H, W) -> PNG bytes, downscaled to at most ``max_side`` on its long side;
    with ``lung_mask`` (bool, the image's size) the lung fields are outlined in cyan."""
    img = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    if lung_mask is not None:
        gray = np.asarray(img)
        img = Image.fromarray(draw_outline(np.repeat(gray[..., None], 3, axis=-1), lung_mask, OUTLINE_COLOR))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast: previews are transient
    return buf.getvalue()
