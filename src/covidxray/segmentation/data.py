"""Lung-mask training data: JSRT (SCR label maps) and the V7 masks of covid-chestxray-dataset.

``mask_pairs(root)`` lists every image with its mask(s), its source and its patient; ``split_pairs`` assigns
train / val / test by patient (JSRT: one image per patient; covid-chestxray-dataset: ``patientid`` of
``metadata.csv``), seeded, so no patient is in two splits.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from covidxray.imageio import load_image

JSRT = "jsrt"
COHEN = "covid-chestxray-dataset"
SCR_RIGHT_LUNG, SCR_LEFT_LUNG, SCR_HEART = 150, 200, 250


@dataclass(frozen=True)
class MaskPair:
    image: Path
    mask: Path
    source: str  # JSRT or COHEN
    patient_id: str

    @property
    def key(self) -> str:
        return f"{self.source}/{self.image.stem}"


def mask_pairs(root: str | Path) -> list[MaskPair]:
    """Every image with a lung mask under the data root, sorted by source and name."""
    root = Path(root)
    pairs: list[MaskPair] = []
    jsrt = root / "JSRT"
    if (jsrt / "masks").is_dir():
        for m in sorted((jsrt / "masks").glob("*.png")):
            img = jsrt / "images" / m.name
            if img.is_file():
                pairs.append(MaskPair(img, m, JSRT, f"jsrt-{m.stem}"))
    cohen = root / "covid-chestxray-dataset"
    masks = root / "lung-masks" / "covid-chestxray-dataset"
    if masks.is_dir() and (cohen / "metadata.csv").is_file():
        by_stem: dict[str, tuple[str, str]] = {}
        with open(cohen / "metadata.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                by_stem[Path(row["filename"]).stem] = (row["filename"], row["patientid"])
        for m in sorted(masks.glob("*.png")):
            if m.stem in by_stem:
                name, pid = by_stem[m.stem]
                img = cohen / "images" / name
                if img.is_file():
                    pairs.append(MaskPair(img, m, COHEN, f"cohen-{pid}"))
    if not pairs:
        raise FileNotFoundError(
            f"{root}: no lung masks found (expected JSRT/masks and lung-masks/covid-chestxray-dataset)"
        )
    return pairs


def split_pairs(pairs: list[MaskPair], seed: int = 0, val: float = 0.1, test: float = 0.2) -> dict[str, str]:
    """key -> "train" | "val" | "test", by patient: a patient's images share a split (seeded hash order)."""
    out: dict[str, str] = {}
    for source in sorted({p.source for p in pairs}):
        patients = sorted({p.patient_id for p in pairs if p.source == source})
        patients.sort(key=lambda pid: hashlib.sha1(f"{seed}:{pid}".encode()).hexdigest())
        n_test, n_val = round(test * len(patients)), round(val * len(patients))
        which = {pid: "test" for pid in patients[:n_test]}
        which.update({pid: "val" for pid in patients[n_test : n_test + n_val]})
        for p in pairs:
            if p.source == source:
                out[p.key] = which.get(p.patient_id, "train")
    return out


def load_targets(pair: MaskPair, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(targets, known) uint8 (3, H, W) each, channels ``lungs, heart, lungs_behind_heart``.

    ``known`` says which channels the source annotates: JSRT lungs + heart; V7 lungs-behind-heart (its lungs
    channel is handled in the loss, see :mod:`covidxray.segmentation.train`). ``size`` = (width, height).
    """
    m = Image.open(pair.mask)
    m = m.convert("L") if m.mode not in ("L", "P") else m
    if size is not None and m.size != size:
        m = m.resize(size, Image.Resampling.NEAREST)
    a = np.asarray(m)
    t = np.zeros((3, *a.shape), dtype=np.uint8)
    if pair.source == JSRT:
        t[0] = (a == SCR_RIGHT_LUNG) | (a == SCR_LEFT_LUNG)
        t[1] = a == SCR_HEART
        known = (1, 1, 0)
    else:
        t[2] = a > 127
        t[0] = t[2]  # upper bound: SCR lungs lie inside the V7 lungs (see the loss)
        known = (0, 0, 1)
    return t, np.asarray(known, dtype=np.uint8)


def load_pixels(pair: MaskPair) -> np.ndarray:
    """The image as grayscale float32 (H, W) in [0, 1], through the project's one loader."""
    return load_image(pair.image).pixels
