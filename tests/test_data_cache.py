"""load_cache: aligned with the manifest rows, reused when unchanged, rebuilt on change, never half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidxray.data.cache import cache_path, load_cache
from covidxray.data.manifest import build_manifest, read_manifest
from covidxray.imageio import ImageLoadError, load_image
from covidxray.preprocess import Preprocessing
from test_data_trees import picture, save

PRE = Preprocessing(image_size=32)


@pytest.fixture
def manifest(tmp_path: Path):
    tree = tmp_path / "data" / "clinic"
    for k, folder in enumerate(["covid", "covid", "normal", "normal", "pneumonia"]):
        save(tree / folder / f"x{k}.png", picture(k))
    return read_manifest(build_manifest(tree, tmp_path / "m.csv", workers=1))


def test_cache_is_aligned_with_the_rows(manifest, tmp_path: Path):
    cached = load_cache(manifest, PRE, tmp_path / "cache", workers=2, progress=False)
    assert cached.shape == (5, 32, 32) and cached.dtype == np.uint8
    for i, rel in enumerate(manifest["path"]):
        expected = PRE.canonical(load_image(Path(manifest.attrs["root"]) / rel).pixels)
        assert np.array_equal(cached[i], expected)


def test_cache_hit_reopens_the_file_read_only(manifest, tmp_path: Path):
    first = load_cache(manifest, PRE, tmp_path / "cache", workers=1, progress=False)
    path = cache_path(manifest, PRE, tmp_path / "cache")
    stamp = path.stat().st_mtime_ns
    second = load_cache(manifest, PRE, tmp_path / "cache", workers=1, progress=False)
    assert isinstance(second, np.memmap) and not second.flags.writeable
    assert path.stat().st_mtime_ns == stamp and np.array_equal(first, second)
    assert list((tmp_path / "cache").iterdir()) == [path]


def test_cache_rebuilds_when_preprocessing_rows_or_images_change(manifest, tmp_path: Path):
    cache = tmp_path / "cache"
    base = cache_path(manifest, PRE, cache)
    assert cache_path(manifest, Preprocessing(image_size=32, intensity="minmax"), cache) != base
    assert cache_path(manifest, Preprocessing(image_size=32, channels=3), cache) == base  # not a pixel change
    train = manifest.iloc[[0, 2, 4]]
    assert cache_path(train, PRE, cache) != base
    assert load_cache(train, PRE, cache, workers=1, progress=False).shape == (3, 32, 32)
    changed = manifest.copy()
    changed.loc[0, "sha1"] = "0" * 40
    assert cache_path(changed, PRE, cache) != base


def test_an_unreadable_image_leaves_no_cache_file(manifest, tmp_path: Path):
    Path(manifest.attrs["root"], manifest["path"].iloc[3]).write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_cache(manifest, PRE, tmp_path / "cache", workers=1, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_frame_without_root_is_refused(manifest, tmp_path: Path):
    frame = manifest.copy()
    frame.attrs = {}
    with pytest.raises(ValueError, match="attrs"):
        load_cache(frame, PRE, tmp_path / "cache", progress=False)


def test_lungcrop_cache_crops_with_the_shipped_segmenter(manifest, tmp_path: Path):
    from covidxray.segmentation import lung_mask_fn
    from covidxray.segmentation.segmenter import default_segmenter_version

    lc = Preprocessing(image_size=32, resize="lungcrop", lung_segmenter=default_segmenter_version())
    assert cache_path(manifest, lc, tmp_path / "cache") != cache_path(manifest, PRE, tmp_path / "cache")
    cached = load_cache(
        manifest, lc, tmp_path / "cache", workers=2, progress=False
    )  # segmenter in each worker
    for i, rel in enumerate(manifest["path"]):
        pixels = load_image(Path(manifest.attrs["root"]) / rel).pixels
        assert np.array_equal(cached[i], lc.canonical(pixels, lung_mask_fn(lc)))
