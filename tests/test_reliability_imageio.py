"""The one loader under hostile and unusual input: decompression bombs, the decoded-pixel cap, reduced
decoding of huge images, and every format folder mode recognises by content."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import xray_like
from covidxray import imageio
from covidxray.imageio import ImageLoadError, load_image, load_image_bytes, sniff_format
from reliability_files import big_png, bomb_png, dicom, encode, every_format


def test_bomb_header_is_refused_as_too_large_not_crashed():
    data = bomb_png(30000, 30000)
    assert len(data) < 400
    with pytest.raises(ImageLoadError) as err:
        load_image_bytes(data, "bomb.png")
    assert err.value.reason == "too_large"
    assert "900 Mpx" in err.value.detail and "limit of 50 Mpx" in err.value.detail
    # above Pillow's own bomb limit (2 x 89 Mpx) and with our cap lifted: still a clear too_large
    with pytest.raises(ImageLoadError) as err:
        load_image_bytes(bomb_png(20000, 20000), "bomb.png", max_pixels=None)
    assert err.value.reason == "too_large" and "decompression bomb" in err.value.detail


def test_pixel_cap_names_the_limit_and_applies_to_dicom():
    png = encode(xray_like(300), "PNG")
    assert load_image_bytes(png, "ok.png", max_pixels=90_000).width == 300
    with pytest.raises(ImageLoadError) as err:
        load_image_bytes(png, "big.png", max_pixels=50_000)
    assert (
        err.value.reason == "too_large"
        and "300x300 px" in err.value.detail
        and "0.05 Mpx" in err.value.detail
    )
    with pytest.raises(ImageLoadError) as err:
        load_image_bytes(dicom(xray_like(300)), "big.dcm", max_pixels=50_000)
    assert err.value.reason == "too_large"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_huge_images_are_decoded_at_a_reduced_scale(monkeypatch, fmt):
    px = xray_like(640)
    full = load_image_bytes(encode(px, fmt), "x")
    monkeypatch.setattr(
        imageio, "REDUCE_ABOVE_PIXELS", 100_000
    )  # 640 x 640 = 410 kpx -> k = 3 (PNG) / 1/4 (JPEG)
    small = load_image_bytes(encode(px, fmt), "x")
    assert small.original_size == (640, 640) and small.width * small.height <= 100_000
    assert small.width >= 160 and abs(small.width - small.height) <= 1
    # the reduced image is the same picture: a 64 px thumbnail of each agrees to a few grey levels
    from PIL import Image

    def thumb(a):
        return np.asarray(
            Image.fromarray((a * 255).astype(np.uint8)).resize((64, 64), Image.Resampling.BOX), float
        )

    assert np.abs(thumb(full.pixels) - thumb(small.pixels)).mean() < 3.0
    assert full.original_size is None


def test_reduced_decoding_never_makes_a_full_size_float_copy(monkeypatch):
    import tracemalloc

    data = big_png(4000)  # 16 Mpx grey, a few kB
    monkeypatch.setattr(imageio, "REDUCE_ABOVE_PIXELS", 1_000_000)
    tracemalloc.start()
    img = load_image_bytes(data, "big.png")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert img.original_size == (4000, 4000) and img.width == 1000
    assert peak < 16_000_000 * 4  # a float32 copy of the full image would be 64 MB alone


def test_every_format_decodes_through_the_one_loader(tmp_path):
    expected = {
        "a.png": "png",
        "b.jpg": "jpeg",
        "c.jfif": "jpeg",
        "d.webp": "webp",
        "e.gif": "gif",
        "f.bmp": "bmp",
        "g.tif": "tiff",
        "h16.tiff": "tiff",
        "IM000001": "dicom",
    }
    ref = xray_like(96).astype(np.float32) / 255.0
    for name, data in every_format().items():
        assert sniff_format(data[:132]) == expected[name], name
        path = tmp_path / name
        path.write_bytes(data)
        img = load_image(path)
        assert img.format == expected[name] and img.pixels.shape == (96, 96), name
        assert img.pixels.dtype == np.float32 and 0 <= img.pixels.min() and img.pixels.max() <= 1, name
        tol = 0.05 if name in ("b.jpg", "c.jfif", "e.gif") else 0.01
        want = (
            (ref - ref.min()) / (ref.max() - ref.min()) if name == "IM000001" else ref
        )  # DICOM: window min-max
        assert np.abs(img.pixels - want).mean() < tol, name
    assert load_image(tmp_path / "h16.tiff").bit_depth == 16
    assert sniff_format(b"BM is not a bitmap header, just text") is None
    assert sniff_format(b"<html>") is None
