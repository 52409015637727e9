"""Open each image once: sha1 of the bytes, full decode (through the one loader), size and a perceptual hash.

The perceptual hash is imagehash's DCT phash with ``hash_size=16`` (256 bits, 64 hex digits) of the *canonical*
grey image (224 px, histogram-equalised: :class:`~covidxray.preprocess.Preprocessing` defaults), so re-encoded,
resized or re-windowed copies of one radiograph hash alike (see :mod:`covidxray.data.dedup`).

Runs across a process pool. Results can be kept in a small CSV keyed by absolute path, file size and mtime, so
a rebuild only opens new or changed files; the CSV records :data:`FINGERPRINT_VERSION` and is ignored when
the decoding or hashing changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from covidxray.imageio import ImageLoadError, load_image_bytes
from covidxray.preprocess import Preprocessing

FINGERPRINT_VERSION = "2"  # bump when decoding, the size check or the hash changes


@dataclass(frozen=True)
class Fingerprint:
    """What the manifest needs from an image file. ``phash`` is 64 hex digits (imagehash.phash, 16x16 DCT)."""

    sha1: str
    width: int
    height: int
    format: str
    phash: str


@dataclass(frozen=True)
class Failure:
    """A file that cannot be used: an :class:`~covidxray.imageio.ImageLoadError` reason code and detail."""

    reason: str
    detail: str


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


PHASH_SIZE = 16  # 16x16 DCT coefficients: 256 bits
HASH_PREPROCESSING = Preprocessing(image_size=224, resize="squash", intensity="equalize")


def perceptual_hash(pixels: np.ndarray) -> str:
    """256-bit DCT perceptual hash of the canonical form of a grayscale [0, 1] image, as 64 hex digits."""
    img = Image.fromarray(HASH_PREPROCESSING.canonical(pixels), mode="L")
    return str(imagehash.phash(img, hash_size=PHASH_SIZE))


def fingerprint_bytes(data: bytes, name: str) -> Fingerprint:
    """Fingerprint image bytes; raises :class:`ImageLoadError` for an unusable image."""
    img = load_image_bytes(data, name)
    return Fingerprint(
        hashlib.sha1(data).hexdigest(), img.width, img.height, img.format, perceptual_hash(img.pixels)
    )


def fingerprint_file(path: str | os.PathLike) -> Fingerprint | Failure:
    """Fingerprint one file, or say why it cannot be used (never raises for a bad image)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return Failure("missing", "file does not exist")
    except OSError as exc:
        return Failure("unreadable", str(exc))
    try:
        return fingerprint_bytes(data, str(path))
    except ImageLoadError as exc:
        return Failure(exc.reason, exc.detail)
    except Exception as exc:  # a decoder bug on one odd file must not stop a build of thousands
        return Failure("not_an_image", f"{type(exc).__name__}: {exc}")


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _read_store(store: Path) -> dict[str, dict]:
    import pandas as pd

    if not store.is_file():
        return {}
    table = pd.read_csv(store, dtype=str, keep_default_na=False)
    if table.empty or set(table["version"]) != {FINGERPRINT_VERSION}:
        return {}
    return {row["path"]: row for row in table.to_dict("records")}


def _write_store(store: Path, rows: dict[str, dict]) -> None:
    import pandas as pd

    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
    pd.DataFrame(list(rows.values())).to_csv(tmp, index=False)
    os.replace(tmp, store)


def _to_row(path: Path, key: tuple[int, int], result: Fingerprint | Failure) -> dict:
    row = {"path": str(path), "size": str(key[0]), "mtime_ns": str(key[1]), "version": FINGERPRINT_VERSION}
    for f in fields(Fingerprint):
        row[f.name] = ""
    row.update({"reason": "", "detail": ""})
    row.update({k: str(v) for k, v in asdict(result).items()})
    return row


def _from_row(row: dict) -> Fingerprint | Failure:
    if row["reason"]:
        return Failure(row["reason"], row["detail"])
    return Fingerprint(row["sha1"], int(row["width"]), int(row["height"]), row["format"], row["phash"])


def fingerprint_files(
    paths: Sequence[Path],
    workers: int | None = None,
    store: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[Fingerprint | Failure]:
    """Fingerprint every file (in order), across ``workers`` processes, reusing ``store`` when given."""
    paths = [Path(p).resolve() for p in paths]
    keys = [_stat_key(p) for p in paths]
    known = _read_store(Path(store)) if store else {}
    results: list[Fingerprint | Failure | None] = [None] * len(paths)
    todo = []
    for i, (path, key) in enumerate(zip(paths, keys, strict=True)):
        row = known.get(str(path))
        if key is None:
            results[i] = Failure("missing", "file does not exist")
        elif row and (row["size"], row["mtime_ns"]) == (str(key[0]), str(key[1])):
            results[i] = _from_row(row)
        else:
            todo.append(i)
    workers = workers or default_workers()
    chunk = max(1, min(64, len(todo) // (workers * 8) or 1))
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers) as pool:
            computed = pool.map(fingerprint_file, [paths[i] for i in todo], chunksize=chunk)
            computed = _progress(computed, len(todo), progress)
            for i, result in zip(todo, computed, strict=True):
                results[i] = result
    else:
        for i, result in zip(
            todo, _progress(map(fingerprint_file, (paths[i] for i in todo)), len(todo), progress), strict=True
        ):
            results[i] = result
    if store and todo:
        for i in todo:
            if keys[i] is not None:
                known[str(paths[i])] = _to_row(paths[i], keys[i], results[i])
        _write_store(Path(store), known)
    return results  # type: ignore[return-value]


def _progress(iterable, total: int, enabled: bool):
    if not enabled or total == 0:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="images", unit="img", leave=False)
