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
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from covidxray.imageio import IMAGE_SUFFIXES, ImageLoadError, sniff_format
from covidxray.prediction.predictor import Prediction

WARNING_SEPARATOR = " | "


# Extensions always predicted in folder mode, even when the content is not recognised (the row then says why).
PREDICT_SUFFIXES = IMAGE_SUFFIXES | {".jfif", ".jpe", ".webp", ".gif", ".dicom"}
HEAD_BYTES = 132  # enough for every signature sniff_format knows, DICOM's "DICM" at byte 128 included

SKIP_REASONS = {
    "hidden": "hidden (name starts with '.')",
    "hidden_folder": "hidden folders not searched (name starts with '.')",
    "empty": "empty (0 bytes, no image extension)",
    "not_an_image": "not an image by content",
    "unreadable": "unreadable (permission denied or a broken link)",
}


class OutputError(ValueError):
    """An ``--out`` (or ``--explain``) destination that cannot be written, or a ``--resume`` file that cannot be
    continued: which path, what is wrong, what to do."""


@dataclass
class ImageScan:
    """The files a folder scan will predict, and what it skipped and why.

    Folder mode recognises images by content (:func:`covidxray.imageio.sniff_format`: PNG, JPEG/JFIF, DICOM with
    its "DICM" marker, TIFF, BMP, WebP, GIF), so extension-less DICOM exports are found; a file with an image
    extension is always predicted (an unreadable one becomes a row with an ``error``). Hidden files and folders
    (names starting with '.', e.g. macOS' ``._x.png`` resource forks, ``.git``) are skipped and counted.
    """

    paths: list[str]
    formats: Counter = field(default_factory=Counter)  # sniffed format -> files
    skipped: Counter = field(default_factory=Counter)  # SKIP_REASONS key -> files
    skipped_suffixes: Counter = field(default_factory=Counter)  # extension -> files skipped as not images

    def lines(self) -> list[str]:
        """Closing-summary lines: what was found by content, and what was skipped and why."""
        out = []
        if self.formats:
            out.append("found by content: " + ", ".join(f"{k} {v}" for k, v in self.formats.most_common()))
        if self.skipped:
            parts = []
            for reason, n in sorted(self.skipped.items()):
                text = f"{n} {SKIP_REASONS[reason]}"
                if reason == "not_an_image" and self.skipped_suffixes:
                    text += (
                        " (" + ", ".join(f"{k} {v}" for k, v in self.skipped_suffixes.most_common(5)) + ")"
                    )
                parts.append(text)
            n_files = sum(v for k, v in self.skipped.items() if k != "hidden_folder")
            out.append(f"skipped {n_files} files: " + "; ".join(parts))
        return out


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def _scan_folder(root: Path) -> ImageScan:
    scan = ImageScan(paths=[])
    for folder, dirs, files in os.walk(root, followlinks=False):
        hidden = [d for d in dirs if d.startswith(".")]
        scan.skipped["hidden_folder"] += len(hidden)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = os.path.join(folder, name)
            if name.startswith("."):
                scan.skipped["hidden"] += 1
                continue
            suffix = os.path.splitext(name)[1].lower()
            try:
                head = _head(path)
            except OSError:
                scan.skipped["unreadable"] += 1
                continue
            kind = sniff_format(head)
            if kind is not None:
                scan.formats[kind] += 1
            elif suffix in PREDICT_SUFFIXES:
                scan.formats[f"unrecognised {suffix}"] += 1
            elif not head:
                scan.skipped["empty"] += 1
                continue
            else:
                scan.skipped["not_an_image"] += 1
                scan.skipped_suffixes[suffix or "no extension"] += 1
                continue
            scan.paths.append(path)
    if not scan.skipped["hidden_folder"]:
        del scan.skipped["hidden_folder"]
    scan.paths.sort()
    return scan


def scan_images(spec: str | os.PathLike) -> ImageScan:
    """The images of a folder (recursively, recognised by content; see :class:`ImageScan`), of a glob pattern
    (every matching file) or one file, sorted.

    Raises :class:`ImageLoadError` (reason ``missing`` or ``empty``) when there is nothing to predict.
    """
    s = str(spec)
    p = Path(s)
    if p.is_dir():
        scan = _scan_folder(p)
        if not scan.paths:
            what = "; ".join(scan.lines()) or "the folder is empty"
            raise ImageLoadError(
                p,
                "empty",
                f"folder holds no image files ({what})",
                "images are recognised by content: PNG, JPEG, DICOM, TIFF, BMP, WebP, GIF",
            )
        return scan
    if glob.has_magic(s):
        paths = sorted(f for f in glob.glob(s, recursive=True) if os.path.isfile(f))
        if not paths:
            raise ImageLoadError(s, "empty", "no files match this pattern", "check the pattern and quote it")
        return ImageScan(paths)
    if p.is_file():
        return ImageScan([s])
    raise ImageLoadError(p, "missing", "folder does not exist", "pass an existing folder or a glob pattern")


def find_images(spec: str | os.PathLike) -> list[str]:
    """The paths :func:`scan_images` finds."""
    return scan_images(spec).paths


def prepare_output(path: Path, append: bool = False) -> None:
    """Check, before any work, that ``path`` can be written: not a folder, parent folders created, writable.

    Raises :class:`OutputError` saying what is wrong. Creates no file that did not exist.
    """
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name such as {path / 'predictions.csv'}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputError(
            f"{path}: cannot create its folder {parent}: a file is in the way ({exc.strerror})"
        ) from exc
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot create its folder {parent} ({exc.strerror}); choose a writable place"
        ) from exc
    existed = path.exists()
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror}); choose a writable place") from exc
    if not existed:
        path.unlink()
    elif not append and path.stat().st_size > 0:
        raise OutputError(
            f"{path}: already exists; pass --resume to continue it (rows already there are kept and their "
            "images skipped) or --overwrite to replace it"
        )


def drop_partial_last_line(path: Path) -> bool:
    """Cut an incomplete last line (a run killed mid-write); True if something was cut."""
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        block = min(size, 1 << 20)
        f.seek(size - block)
        tail = f.read(block)
        cut = tail.rfind(b"\n")
        f.truncate(size - block + cut + 1 if cut >= 0 else 0)
    return True


def read_done(path: Path, classes: list[str], jsonl: bool) -> set[str]:
    """The paths already in an output file ``--resume`` continues (CSV with the same columns, or JSONL).

    An incomplete last line (a killed run) is cut so that image is predicted again. Raises :class:`OutputError`
    when the file was written for other classes or is not an output of ``covidxray predict``.
    """
    if not path.exists() or path.stat().st_size == 0:
        return set()
    drop_partial_last_line(path)
    done: set[str] = set()
    with open(path, encoding="utf-8", newline="") as f:
        if jsonl:
            for n, line in enumerate(f, 1):
                try:
                    done.add(str(json.loads(line)["path"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise OutputError(
                        f"{path}: line {n} is not a row of 'covidxray predict' ({exc}); cannot resume it"
                    ) from exc
            return done
        reader = csv.reader(f)
        header = next(reader, [])
        if header and header != columns(classes):
            raise OutputError(
                f"{path}: its columns {header} are not this model's {columns(classes)}; "
                "resume with the model that wrote it, or write to a new file"
            )
        done.update(r[0] for r in reader if r)
    return done


def columns(classes: list[str]) -> list[str]:
    """Output columns: path, label, p_<class> for each class, decided_by (the deciding operating point, empty
    for arg-max), threshold (its threshold on p_<its class>), warnings, error."""
    return ["path", "label", *(f"p_{c}" for c in classes), "decided_by", "threshold", "warnings", "error"]


def row(pred: Prediction, classes: list[str]) -> dict[str, object]:
    """One output row; probabilities rounded to 6 decimals, empty when the image was not predicted."""
    out: dict[str, object] = {"path": pred.path or "", "label": pred.label or ""}
    for c in classes:
        p = pred.probabilities.get(c)
        out[f"p_{c}"] = "" if p is None else round(p, 6)
    d = pred.decision or {}
    out["decided_by"] = d.get("point") or ("argmax" if pred.label else "")
    out["threshold"] = "" if d.get("threshold") is None else round(d["threshold"], 6)
    out["warnings"] = WARNING_SEPARATOR.join(pred.warnings)
    out["error"] = pred.error or ""
    return out


class RowWriter:
    """Writes rows to ``.csv`` (default) or ``.jsonl`` (by the file name), flushing every ``flush_every`` rows.

    ``header=False`` appends to a CSV that already has its header (``--resume``)."""

    def __init__(
        self,
        stream: IO[str],
        classes: list[str],
        jsonl: bool = False,
        flush_every: int = 256,
        header: bool = True,
    ):
        self.stream, self.classes, self.jsonl, self.flush_every = stream, classes, jsonl, flush_every
        self._n = 0
        self._csv = None
        if not jsonl:
            self._csv = csv.DictWriter(stream, fieldnames=columns(classes), lineterminator="\n")
            if header:
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


@contextmanager
def interrupts_between_rows() -> Iterator[Callable[[], bool]]:
    """Hold a first Ctrl-C (SIGINT) until the caller asks; yields the "was one pressed?" check.

    A row written but not yet counted (or counted but not written) would make the closing summary disagree with
    the file. Inside this block a first SIGINT only sets a flag, which the caller turns into ``KeyboardInterrupt``
    between rows; a second one interrupts at once, as before. Outside the main thread, or when SIGINT is not
    Python's default handler (e.g. a server installed its own), nothing changes and the check is always False.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield lambda: False
        return
    pressed = False

    def held(signum, frame):  # noqa: ARG001 - the signal module's handler signature
        nonlocal pressed
        if pressed:
            raise KeyboardInterrupt
        pressed = True

    signal.signal(signal.SIGINT, held)
    try:
        yield lambda: pressed
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def resume_command(args) -> str:
    """The command line that continues this run: the one given (``args.argv``, else ``sys.argv``), with
    ``--resume`` and without ``--overwrite``."""
    import shlex
    import sys

    argv = [a for a in getattr(args, "argv", None) or sys.argv[1:] if a != "--overwrite"]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["covidxray", *argv])


def stream_rows(
    preds: Iterable[Prediction], writer: RowWriter, summary: BatchSummary
) -> Iterator[Prediction]:
    """Write and count each prediction, passing it on (for a progress bar or Grad-CAM).

    A Ctrl-C is honoured between rows (:func:`interrupts_between_rows`): every row in the output is counted in
    ``summary`` and every counted row is in the output.
    """
    with interrupts_between_rows() as interrupted:
        for pred in preds:
            if interrupted():
                raise KeyboardInterrupt
            writer.write(pred)
            summary.add(pred)
            if interrupted():
                raise KeyboardInterrupt
            yield pred
            if interrupted():  # pressed while the caller had the row: before the next image is read
                raise KeyboardInterrupt


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
