"""Lung masks as data: clean-up of a probability map, plausibility facts, bounding box, outline drawing.

NumPy, SciPy and Pillow only (no torch), so the ONNX path, the input guard and the web page can use it.
Masks follow the SCR convention: lung fields as seen on the radiograph, the heart excluded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

# A component smaller than this share of the image is noise, not a lung.
MIN_COMPONENT_FRACTION = 0.005
# Plausible frontal lung fields. The 675 reference masks span area 0.18-0.46 (JSRT) and 0.09-0.62 (V7, lungs
# behind the heart included), left/right balance >= 0.54, always >= 2 components; the limits leave a margin
# (BENCHMARKS.md, "Lung fields", measures what they flag on real X-rays, non-X-rays and lateral views).
PLAUSIBLE_AREA = (0.08, 0.65)
MIN_BALANCE = 0.25  # smaller lung / larger lung (left-right halves of the image)


@dataclass(frozen=True)
class LungFacts:
    """What a lung mask says about the image: used by ``lungs.csv``, the input guard and the web page."""

    area_fraction: float  # lung pixels / image pixels
    components: int  # connected components after clean-up (2 expected)
    balance: float  # smaller / larger of the lung areas in the image's left and right halves (0..1)
    quality: (
        str  # "ok" or the first implausibility: "no_lungs", "small", "large", "one_component", "unbalanced"
    )

    @property
    def plausible(self) -> bool:
        return self.quality == "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """A sentence for warnings: what was found, in numbers."""
        return (
            f"lung fields cover {self.area_fraction:.0%} of the image in {self.components} region(s), "
            f"left/right balance {self.balance:.2f} ({self.quality})"
        )


def clean_mask(prob: np.ndarray, threshold: float = 0.5, keep: int = 2) -> np.ndarray:
    """Probability map (H, W) -> boolean mask: threshold, keep the ``keep`` largest components, fill holes."""
    mask = np.asarray(prob) >= threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    min_size = MIN_COMPONENT_FRACTION * mask.size
    order = np.argsort(sizes)[::-1][:keep]
    kept = [i + 1 for i in order if sizes[i] >= min_size]
    mask = np.isin(labels, kept)
    return ndimage.binary_fill_holes(mask)


def lung_facts(mask: np.ndarray) -> LungFacts:
    """Area, components and left/right balance of a (cleaned) boolean mask, and a quality flag."""
    m = np.asarray(mask, dtype=bool)
    area = float(m.mean()) if m.size else 0.0
    _, n = ndimage.label(m)
    half = m.shape[1] // 2
    left, right = float(m[:, :half].sum()), float(m[:, half:].sum())
    balance = min(left, right) / max(left, right) if max(left, right) > 0 else 0.0
    if n == 0 or area == 0.0:
        quality = "no_lungs"
    elif area < PLAUSIBLE_AREA[0]:
        quality = "small"
    elif area > PLAUSIBLE_AREA[1]:
        quality = "large"
    elif n < 2:
        quality = "one_component"
    elif balance < MIN_BALANCE:
        quality = "unbalanced"
    else:
        quality = "ok"
    return LungFacts(round(area, 4), int(n), round(balance, 3), quality)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean (H, W): the mask's border pixels, ``width`` px thick."""
    m = np.asarray(mask, dtype=bool)
    inner = ndimage.binary_erosion(m, iterations=max(1, width), border_value=0)
    return m & ~inner


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean mask resized to (width, height) by nearest neighbour."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")
    return np.asarray(img.resize(size, Image.Resampling.NEAREST)) > 127


def draw_outline(
    rgb: np.ndarray, mask: np.ndarray, color=(0, 255, 255), width: int | None = None
) -> np.ndarray:
    """Copy of an RGB uint8 image (H, W, 3) with the lung mask's outline drawn on it."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    m = np.asarray(mask, dtype=bool)
    if m.shape != out.shape[:2]:
        m = resize_mask(m, (out.shape[1], out.shape[0]))
    w = width or max(1, round(min(out.shape[:2]) / 200))
    out[outline(m, w)] = np.asarray(color, dtype=np.uint8)
    return out
