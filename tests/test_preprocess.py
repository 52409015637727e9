"""The one preprocessing definition: deterministic, shape/range contract, serialisable, source-cue removal."""

import numpy as np
import pytest

from covidxray.preprocess import Preprocessing


def _gradient(h=300, w=200, lo=0.2, hi=0.6):
    return np.linspace(lo, hi, h * w, dtype=np.float32).reshape(h, w)


@pytest.mark.parametrize("resize", ["squash", "pad", "crop"])
@pytest.mark.parametrize("intensity", ["equalize", "percentile", "minmax", "none"])
def test_canonical_shape_dtype(resize, intensity):
    p = Preprocessing(image_size=64, resize=resize, intensity=intensity)
    out = p.canonical(_gradient())
    assert out.shape == (64, 64) and out.dtype == np.uint8


def test_to_input_range_and_channels():
    p = Preprocessing(image_size=32, channels=3)
    x = p(_gradient())
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.array_equal(x[0], x[2])
    batch = p.to_input(np.stack([p.canonical(_gradient())] * 4))
    assert batch.shape == (4, 3, 32, 32)


def test_intensity_normalisation_removes_brightness_and_contrast_differences():
    # the same anatomy stored darker/low-contrast by one source and brighter by another
    rng = np.random.default_rng(0)
    base = rng.random((128, 128)).astype(np.float32)
    dark, bright = 0.1 + 0.3 * base, 0.4 + 0.6 * base
    for mode in ("equalize", "percentile", "minmax"):
        p = Preprocessing(image_size=64, intensity=mode)
        diff = np.abs(p.canonical(dark).astype(int) - p.canonical(bright).astype(int)).mean()
        assert diff < 6, (mode, diff)  # quantisation of the low-contrast copy leaves a few grey levels
    raw = Preprocessing(image_size=64, intensity="none")
    assert np.abs(raw.canonical(dark).astype(int) - raw.canonical(bright).astype(int)).mean() > 40


def test_round_trip_and_cache_key():
    p = Preprocessing(image_size=128, channels=3, intensity="percentile", percentiles=(2, 98))
    q = Preprocessing.from_dict(p.to_dict())
    assert p == q
    assert (
        Preprocessing(image_size=128, channels=1).cache_key()
        == Preprocessing(image_size=128, channels=3).cache_key()
    )
    assert Preprocessing(image_size=128).cache_key() != Preprocessing(image_size=224).cache_key()


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"resize": "stretch"}, "resize"),
        ({"intensity": "clahe"}, "intensity"),
        ({"image_size": 8}, "image_size"),
        ({"channels": 2}, "channels"),
    ],
)
def test_bad_values_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Preprocessing(**kw)


def test_rejects_colour_array():
    with pytest.raises(ValueError, match="2-D grayscale"):
        Preprocessing(image_size=32).canonical(np.zeros((40, 40, 3), np.float32))
