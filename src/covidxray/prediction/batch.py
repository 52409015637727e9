"""Batch prediction: find the images of a folder or glob, stream predictions to CSV/JSONL, summarise.

Memory stays bounded whatever the number of images: paths are listed once (strings only), images are decoded
and predicted ``batch_size`` at a time by :meth:`Predictor.iter_predict`, and each row is written as soon as it
is ready. Unreadable files become rows with an ``error``; they never stop the run.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from covidxray.imageio import IMAGE_SUFFIXES, ImageLoadError
from covidxray.prediction.predictor import Prediction

WARNING_SEPARATOR = " | "


def find_images(spec: str | os.PathLike) -> list[str]:
    """Image files of a folder (recursively, by image extension) or of a glob pattern, sorted.

    Raises :class:`ImageLoadError` (reason ``missing`` or ``empty``) when there is nothing to predict.
    """
    s = str(spec)
    p = Path(s)
    if p.is_dir():
        paths = sorted(
            str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
        )
        if not paths:
            raise ImageLoadError(
                p,
                "empty",
                "folder holds no image files",
                f"expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}",
            )
        return paths
    if glob.has_magic(s):
        paths = sorted(f for f in glob.glob(s, recursive=True) if os.path.isfile(f))
        if not paths:
            raise ImageLoadError(s, "empty", "no files match this pattern", "check the pattern and quote it")
        return paths
    if p.is_file():
        return [s]
    raise ImageLoadError(p, "missing", "folder does not exist", "pass an existing folder or a glob pattern")


def columns(classes: list[str]) -> list[str]:
    """Output columns: path, label, p_<class> for each class, warnings, error."""
    return ["path", "label", *(f"p_{c}" for c in classes), "warnings", "error"]


def row(pred: Prediction, classes: list[str]) -> dict[str, object]:
    """One output row; probabilities rounded to 6 decimals, empty when the image was not predicted."""
    out: dict[str, object] = {"path": pred.path or "", "label": pred.label or ""}
    for c in classes:
        p = pred.probabilities.get(c)
        out[f"p_{c}"] = "" if p is None else round(p, 6)
    out["warnings"] = WARNING_SEPARATOR.join(pred.warnings)
    out["error"] = pred.error or ""
    return out


class RowWriter:
    """Writes rows to ``.csv`` (default) or ``.jsonl`` (by the file name), flushing every ``flush_every`` rows."""

    def __init__(self, stream: IO[str], classes: list[str], jsonl: bool = False, flush_every: int = 256):
        self.stream, self.classes, self.jsonl, self.flush_every = stream, classes, jsonl, flush_every
        self._n = 0
        self._csv = None
        if not jsonl:
            self._csv = csv.DictWriter(stream, fieldnames=columns(classes), lineterminator="\n")
            self._csv.writeheader()

    def write(self, pred: Prediction) -> None:
        r = row(pred, self.classes)
        if self._csv is not None:
            self._csv.writerow(r)
        else:
            r["warnings"] = list(pred.warnings)
            r["error"] = pred.error
            self.stream.write(json.dumps(r) + "\n")
        self._n += 1
        if self._n % self.flush_every == 0:
            self.stream.flush()


@dataclass
class BatchSummary:
    """Counts over a batch run, for the closing lines."""

    total: int = 0
    labels: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # by reason code
    with_warnings: int = 0
    refused: int = 0

    def add(self, pred: Prediction) -> None:
        self.total += 1
        if pred.error_reason == "refused":
            self.refused += 1
        elif pred.error:
            self.errors[pred.error_reason or "error"] += 1
        else:
            self.labels[pred.label] += 1
        if pred.warnings:
            self.with_warnings += 1

    @property
    def predicted(self) -> int:
        return sum(self.labels.values())

    def lines(self) -> list[str]:
        labels = ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items())) or "none"
        out = [f"{self.total} images: {self.predicted} predicted ({labels})"]
        if self.errors:
            out.append(
                f"{sum(self.errors.values())} could not be read ("
                + ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
                + ")"
            )
        if self.with_warnings:
            out.append(f"{self.with_warnings} with input-guard warnings")
        if self.refused:
            out.append(f"{self.refused} refused by the input guard (--strict)")
        return out


def stream_rows(
    preds: Iterable[Prediction], writer: RowWriter, summary: BatchSummary
) -> Iterator[Prediction]:
    """Write and count each prediction, passing it on (for a progress bar or Grad-CAM)."""
    for pred in preds:
        writer.write(pred)
        summary.add(pred)
        yield pred


def manifest_image_paths(manifest: str | os.PathLike, split: str | None = None) -> list[str]:
    """The image paths of a manifest's rows (``root/path``; the root may be a URI), in manifest order."""
    from covidxray.data.manifest import read_manifest

    df = read_manifest(manifest)
    if split and split != "all":
        df = df[df["split"].astype(str) == split]
    root = str(df.attrs["root"])
    if "://" in root:
        return [root.rstrip("/") + "/" + str(p) for p in df["path"]]
    return [str(Path(root) / str(p)) for p in df["path"]]
