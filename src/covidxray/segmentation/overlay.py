"""Pictures of lung masks: the X-ray with the lung fields outlined (CLI ``--overlay``, web page)."""

from __future__ import annotations

import numpy as np

from covidxray.segmentation.masks import draw_outline, resize_mask

OUTLINE_COLOR = (0, 229, 255)


def lung_overlay(pixels: np.ndarray, mask: np.ndarray, tint: float = 0.18) -> np.ndarray:
    """RGB uint8 (H, W, 3): the grayscale image, lungs lightly tinted, their outline drawn in cyan."""
    g = np.clip(np.asarray(pixels, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rgb = np.repeat(g[..., None], 3, axis=-1).astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    if m.shape != g.shape:
        m = resize_mask(m, (g.shape[1], g.shape[0]))
    color = np.asarray(OUTLINE_COLOR, dtype=np.float32)
    rgb[m] = (1 - tint) * rgb[m] + tint * color
    return draw_outline(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), m, OUTLINE_COLOR)
