"""The preprocessed-image cache: every manifest image decoded and preprocessed once, kept as a uint8 ``.npy``.

``load_cache(df, preprocessing)`` returns a read-only memory map of shape (N, S, S) aligned with ``df``'s rows,
holding ``preprocessing.canonical(load_image(root / path).pixels)``. The file name is a hash of the rows' sha1
(in row order) and ``preprocessing.cache_key()``, so any change to the images, their order, the subset of rows
or the preprocessing gives a new file, and an existing file is simply reopened. A cache is written to a
temporary file and renamed into place, so an interrupted build never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray.imageio import load_image
from covidxray.preprocess import Preprocessing
from covidxray.segmentation.segmenter import lung_mask_fn


def cache_key(df: pd.DataFrame, preprocessing: Preprocessing) -> str:
    """Hex digest of the rows' sha1 (in order) and the preprocessing fields that change the cached pixels."""
    h = hashlib.sha1()
    h.update(json.dumps(preprocessing.cache_key(), sort_keys=True).encode())
    h.update("\n".join(df["sha1"].astype(str)).encode())
    return h.hexdigest()


def cache_path(
    df: pd.DataFrame, preprocessing: Preprocessing, cache_dir: str | os.PathLike = "runs/cache"
) -> Path:
    """Where the cache of these rows under this preprocessing lives."""
    return Path(cache_dir) / f"{preprocessing.image_size}px-{cache_key(df, preprocessing)[:24]}.npy"


def _image_paths(df: pd.DataFrame) -> list[Path]:
    root = df.attrs.get("root")
    if not root:
        raise ValueError(
            "the manifest DataFrame has no attrs['root']; read it with covidxray.data.manifest.read_manifest"
        )
    return [Path(root) / p for p in df["path"]]


def _canonical(path: Path, preprocessing: Preprocessing) -> np.ndarray:
    return preprocessing.canonical(load_image(path).pixels, lung_mask_fn(preprocessing))


def _decoded(paths: list[Path], preprocessing: Preprocessing, workers: int):
    work = partial(_canonical, preprocessing=preprocessing)
    if workers <= 1 or len(paths) < 2:
        yield from map(work, paths)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(work, paths, chunksize=max(1, min(32, len(paths) // (workers * 8) or 1)))


def load_cache(
    df: pd.DataFrame,
    preprocessing: Preprocessing,
    cache_dir: str | os.PathLike = "runs/cache",
    workers: int = 2,
    progress: bool = True,
) -> np.ndarray:
    """uint8 (N, S, S) images aligned with ``df`` rows, built on first use and memory-mapped read-only after.

    Raises :class:`~covidxray.imageio.ImageLoadError` when an image can no longer be read (nothing is written).
    """
    path = cache_path(df, preprocessing, cache_dir)
    s = int(preprocessing.image_size)
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape == (len(df), s, s) and cached.dtype == np.uint8:
            return cached
    paths = _image_paths(df)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(df), s, s))
        images = _decoded(paths, preprocessing, workers)
        if progress and len(paths):
            from tqdm import tqdm

            images = tqdm(images, total=len(paths), desc=f"cache {s}px", unit="img", leave=False)
        for i, image in enumerate(images):
            out[i] = image
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")
