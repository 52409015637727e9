"""Lung fields: mask clean-up and facts, the lung crop, the shipped segmenter (ONNX and torch), ``covidxray segment``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidxray.cli import main
from covidxray.preprocess import Preprocessing, lung_box
from covidxray.segmentation import clean_mask, dice, load_segmenter, lung_facts


def two_lungs(h: int = 100, w: int = 120) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[20:80, 15:50] = True
    m[20:80, 70:105] = True
    return m


# -- masks -------------------------------------------------------------------------------------------------------
def test_clean_mask_keeps_two_largest_components_and_fills_holes():
    prob = two_lungs().astype(np.float32)
    prob[40:45, 25:30] = 0.0  # a hole
    prob[2:4, 2:4] = 1.0  # a speck
    prob[85:95, 55:65] = 0.9  # a third, smaller region
    m = clean_mask(prob)
    assert m[42, 27] and not m[3, 3] and not m[90, 60]
    assert dice(m, two_lungs()) == 1.0


def test_lung_facts_flag_implausible_masks():
    assert lung_facts(two_lungs()).quality == "ok"
    one = two_lungs()
    one[:, 60:] = False
    f = lung_facts(one)
    assert (f.components, f.quality) == (1, "one_component")
    assert lung_facts(np.zeros((50, 50), bool)).quality == "no_lungs"
    lopsided = two_lungs()
    lopsided[20:80, 70:100] = False
    assert lung_facts(lopsided).quality == "unbalanced"
    assert "lung fields cover" in lung_facts(one).describe()


def test_lungcrop_crops_to_the_mask_box_plus_margin():
    assert lung_box(two_lungs(), margin=0.0) == (15, 20, 105, 80)
    assert lung_box(two_lungs(), margin=0.1) == (6, 14, 114, 86)
    assert lung_box(np.zeros((10, 10), bool)) is None
    img = np.zeros((100, 120), np.float32)
    img[20:80, 15:105] = 1.0  # bright exactly where the lung box is
    p = Preprocessing(image_size=32, resize="lungcrop", intensity="none", lungcrop_margin=0.0)
    with pytest.raises(ValueError, match="lung mask"):
        p.canonical(img)
    out = p.canonical(img, two_lungs())
    assert out.min() > 250  # the crop holds only the bright box
    assert np.array_equal(out, p.canonical(img, lambda px: two_lungs()))  # a mask function works the same
    # the crop and the segmenter version change the cache key only for lungcrop
    assert "lung_segmenter" in p.cache_key() and "lung_segmenter" not in Preprocessing().cache_key()
    assert Preprocessing().cache_key() == {"image_size": 224, "resize": "squash", "intensity": "equalize",
                                           "percentiles": [1.0, 99.0]}  # fmt: skip
    lungs = p.canonical_mask(two_lungs())
    assert lungs.shape == (32, 32) and lungs.mean() > 0.7


def test_lungmask_crops_like_lungcrop_then_blacks_out_what_is_outside_the_lungs():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 1.0, (100, 120)).astype(np.float32)  # texture everywhere, never black
    crop = Preprocessing(image_size=48, resize="lungcrop", intensity="none", lungcrop_margin=0.1)
    masked = Preprocessing(image_size=48, resize="lungmask", intensity="none", lungcrop_margin=0.1)
    a, b = crop.canonical(img, two_lungs()), masked.canonical(img, two_lungs())
    lungs = masked.canonical_mask(two_lungs())
    assert a.min() > 0 and (b == 0).any()  # the plain crop keeps the margin; the mask blacks it out
    assert np.array_equal(a[lungs], b[lungs])  # the lung fields are untouched (intensity "none")
    assert masked.needs_lungs and "lung_segmenter" in masked.cache_key()
    # equalisation: its histogram comes from the (widened) lung fields only, and the outside stays black
    eq = Preprocessing(image_size=48, resize="lungmask", lungcrop_margin=0.1).canonical(img, two_lungs())
    assert (eq[~lungs] == 0).mean() > 0.5 and eq[lungs].max() == 255
    with pytest.raises(ValueError, match="lung mask"):
        masked.canonical(img)
    # no usable mask: the whole image, nothing blacked out (as lungcrop falls back)
    whole = masked.canonical(img, np.zeros((100, 120), bool))
    assert whole.shape == (48, 48) and whole.min() > 0


def test_equalize_lungs_takes_the_lookup_table_from_the_lung_fields_and_keeps_the_crop():
    # lungs of one texture inside a body whose brightness differs between two "hospitals": with the crop's own
    # histogram the lungs' grey levels move with the body; with the lungs' histogram they do not
    rng = np.random.default_rng(1)
    lung_tex = rng.uniform(0.1, 0.5, (100, 120)).astype(np.float32)
    mask = two_lungs()
    body_tex = rng.uniform(0.0, 0.3, (100, 120)).astype(np.float32)
    images = [np.where(mask, lung_tex, body + body_tex).astype(np.float32) for body in (0.05, 0.6)]
    lungs = Preprocessing(image_size=48, resize="lungcrop", lungcrop_margin=0.1).canonical_mask(mask)
    inner = lungs.copy()  # away from the edges, where resizing blends lung and body
    for dy, dx in ((-2, 0), (2, 0), (0, -2), (0, 2)):
        inner &= np.roll(lungs, (dy, dx), axis=(0, 1))

    def lung_levels(intensity):
        p = Preprocessing(image_size=48, resize="lungcrop", intensity=intensity, lungcrop_margin=0.1)
        return [p.canonical(img, mask) for img in images]

    (a, b), (c, d) = lung_levels("equalize"), lung_levels("equalize_lungs")
    moved = [np.abs(x[inner].astype(int) - y[inner].astype(int)).mean() for x, y in ((a, b), (c, d))]
    assert moved[1] < 3 and moved[0] > 3 * moved[1], moved  # the crop's histogram moved them, the lungs' not
    assert not np.array_equal(a, c)
    assert c[lungs].min() < 20 and c[lungs].max() > 235  # the lung fields span the whole range
    assert (d[~lungs] > 0).all()  # nothing blacked out (a body brighter than the lungs stays bright)
    assert "equalize_lungs" in str(Preprocessing(resize="lungcrop", intensity="equalize_lungs").cache_key())
    with pytest.raises(ValueError, match="equalize_lungs.*lungcrop"):
        Preprocessing(resize="squash", intensity="equalize_lungs")
    from covidxray.prediction.export import describe_preprocessing  # what an ONNX export says of it

    assert "lung fields' histogram" in describe_preprocessing(
        eql_pre := Preprocessing(resize="lungcrop", intensity="equalize_lungs")
    )
    assert eql_pre.needs_lungs
    # no usable mask: the whole image, equalised on its own histogram (as lungcrop falls back)
    plain = Preprocessing(image_size=48, resize="lungcrop", lungcrop_margin=0.1, intensity="equalize")
    eql = Preprocessing(image_size=48, resize="lungcrop", lungcrop_margin=0.1, intensity="equalize_lungs")
    empty = np.zeros((100, 120), bool)
    assert np.array_equal(plain.canonical(images[0], empty), eql.canonical(images[0], empty))


# -- the shipped segmenter on real images --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jsrt_pairs(data_root):
    from covidxray.segmentation.data import JSRT, mask_pairs, split_pairs

    pairs = [p for p in mask_pairs(data_root) if p.source == JSRT]
    split = split_pairs(pairs)
    return [p for p in pairs if split[p.key] == "test"][:4]


def test_shipped_segmenter_onnx_and_torch_agree_on_held_out_jsrt(jsrt_pairs):
    from covidxray.segmentation.data import load_targets

    onnx, torch_seg = load_segmenter(backend="onnx"), load_segmenter(backend="torch")
    assert onnx.version == torch_seg.version and onnx.version.startswith("lung-unet@")
    for pair in jsrt_pairs:
        mask = onnx.predict(pair.image)
        w, h = Image.open(pair.image).size
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        truth = load_targets(pair)[0][0].astype(bool)
        assert dice(mask > 0, truth) > 0.9
        assert dice(mask > 0, torch_seg.predict(pair.image) > 0) > 0.99


def test_onnx_segmenter_and_lungcrop_predictor_do_not_import_torch(jsrt_pairs, tiny_bundle, tmp_path):
    import shutil

    from covidxray.bundle import read_config, update_bundle
    from covidxray.prediction.export import export_onnx
    from covidxray.segmentation.segmenter import default_segmenter_version

    bundle = tmp_path / "lungcrop"
    shutil.copytree(tiny_bundle, bundle)
    pre = read_config(bundle).preprocessing
    lc = Preprocessing(
        image_size=pre.image_size, resize="lungcrop", lung_segmenter=default_segmenter_version()
    )
    update_bundle(bundle, preprocessing=lc)
    export_onnx(bundle, bundle / "model.onnx")
    code = (
        "import sys, covidxray\n"
        "from covidxray.segmentation import load_segmenter\n"
        f"m = load_segmenter().predict({str(jsrt_pairs[0].image)!r})\n"
        f"pred = covidxray.load_model({str(bundle / 'model.onnx')!r}, backend='onnx').predict({str(jsrt_pairs[0].image)!r})\n"
        "assert pred.ok and pred.lungs['quality'] == 'ok', pred\n"
        "print(int(m.max()), 'TORCH' if 'torch' in sys.modules else 'NO_TORCH')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["255", "NO_TORCH"]


# -- the CLI ---------------------------------------------------------------------------------------------------------
def test_segment_cli_folder_writes_same_size_masks_csv_and_reports_bad_files(jsrt_pairs, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for p in jsrt_pairs[:2]:
        shutil_copy(p.image, src / p.image.name)
    big = Image.open(jsrt_pairs[2].image).convert("L").resize((300, 260))  # another size, not square
    big.save(src / "resized.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "masks"
    assert main(["segment", "--images", str(src), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "lungs.csv")))
    assert len(rows) == 4
    by = {Path(r["path"]).stem: r for r in rows}
    assert by["broken"]["error"] and not by["broken"]["mask"]
    for stem in ("resized", jsrt_pairs[0].image.stem):
        m = np.asarray(Image.open(out / f"{stem}.png"))
        w, h = Image.open(next(src.glob(f"{stem}.*"))).size
        assert m.shape == (h, w) and set(np.unique(m)) <= {0, 255}
        assert by[stem]["quality"] == "ok" and 0.1 < float(by[stem]["area_fraction"]) < 0.6
        assert by[stem]["components"] == "2"
    err = capsys.readouterr().err
    assert "4 images: 3 segmented" in err and "1 could not be read" in err


def shutil_copy(a: Path, b: Path) -> None:
    b.write_bytes(a.read_bytes())


def test_segment_cli_single_image_overlay_and_errors(jsrt_pairs, tmp_path, capsys):
    overlay = tmp_path / "o.png"
    assert main(["segment", "--image", str(jsrt_pairs[0].image), "--overlay", str(overlay)]) == 0
    assert "quality: ok" in capsys.readouterr().out
    assert (
        Image.open(overlay).mode == "RGB" and Image.open(overlay).size == Image.open(jsrt_pairs[0].image).size
    )
    assert main(["segment", "--image", str(tmp_path / "missing.png")]) == 3
    assert main(["segment", "--images", str(tmp_path)]) == 2  # no --out
    assert main(["segment", "--image", str(jsrt_pairs[0].image), "--segmenter", str(tmp_path / "nope")]) == 5


def _folder_with_a_broken_file(tmp_path: Path, pairs) -> Path:
    """A folder of the pairs' X-rays and ``broken.png`` (sorted last: it lands in the last batch)."""
    src = tmp_path / "in"
    src.mkdir()
    for p in pairs:
        shutil_copy(p.image, src / p.image.name)
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    return src


def _segment_with_ctrl_c(monkeypatch, argv: list[str], presses: int) -> int:
    """``covidxray segment`` with ``presses`` Ctrl-Cs (real SIGINTs, as from a terminal) sent while the second batch
    is segmented; the exit code. Afterwards the shipped segmenter loads as usual and SIGINT is Python's default
    handler again."""
    import os
    import signal
    import time

    from covidxray.prediction import segment_cli

    real_load = segment_cli._load

    class Interrupted:
        def __init__(self, seg):
            self.seg, self.calls = seg, 0

        def segment_many(self, images):
            self.calls += 1
            if self.calls == 2:
                for _ in range(presses):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.05)
            return self.seg.segment_many(images)

    monkeypatch.setattr(segment_cli, "_load", lambda args: Interrupted(real_load(args)))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = main(argv)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
        monkeypatch.setattr(segment_cli, "_load", real_load)
    return rc


def test_segment_cli_ctrl_c_stops_at_a_batch_end_and_resume_finishes_the_same_table(
    jsrt_pairs, tmp_path, monkeypatch, capsys
):
    """Ctrl-C while the second batch is segmented: that batch is finished (masks and rows together), the summary
    counts the rows in lungs.csv, the resume command is printed, exit 130. The folder is not overwritten without
    --resume/--overwrite; --resume (after a killed run's half-written line) ends with the table of a run never
    interrupted."""
    src = _folder_with_a_broken_file(tmp_path, jsrt_pairs)
    out = tmp_path / "masks"
    argv = ["segment", "--images", str(src), "--out", str(out), "--batch-size", "2"]
    assert _segment_with_ctrl_c(monkeypatch, argv, presses=1) == 130
    err = capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "lungs.csv")))
    assert len(rows) == 4  # two whole batches of two
    assert "interrupted: 4 of 5 images done, 1 left" in err
    assert f"resume with: covidxray segment --images {src} --out {out} --batch-size 2 --resume" in err
    assert all((out / r["mask"]).is_file() for r in rows if not r["error"])

    assert main(argv) == 2  # not overwritten silently
    assert "--resume" in capsys.readouterr().err
    with open(out / "lungs.csv", "a") as fh:  # a killed run's half-written row: cut, that image done again
        fh.write(f"{src / 'x.png'},x.png,12")
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "4 images already in" in err and "(appended)" in err
    whole = tmp_path / "whole"
    assert main(["segment", "--images", str(src), "--out", str(whole)]) == 0
    assert (out / "lungs.csv").read_text() == (whole / "lungs.csv").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole.iterdir())
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "lungs.csv").read_text() == (whole / "lungs.csv").read_text()


def test_segment_cli_second_ctrl_c_drops_the_batch_and_a_killed_header_starts_afresh(
    jsrt_pairs, tmp_path, monkeypatch, capsys
):
    """A second Ctrl-C inside a batch interrupts at once: that batch is neither in lungs.csv nor in the summary.
    A table cut to a half-written header (a run killed at its start) is resumed as a new one."""
    # broken.png is read (and fails) in the second batch, the one that is dropped
    src = _folder_with_a_broken_file(tmp_path, jsrt_pairs[:3])
    out = tmp_path / "masks"
    argv = ["segment", "--images", str(src), "--out", str(out), "--batch-size", "2"]
    assert _segment_with_ctrl_c(monkeypatch, argv, presses=2) == 130
    err = capsys.readouterr().err
    assert len(list(csv.DictReader(open(out / "lungs.csv")))) == 2
    assert "2 images: 2 segmented (ok 2)" in err and "interrupted: 2 of 4 images done, 2 left" in err
    assert "could not be read" not in err  # broken.png's batch is not in the table, so not in the summary
    assert main([*argv, "--resume"]) == 0
    whole = tmp_path / "whole"
    assert main(["segment", "--images", str(src), "--out", str(whole)]) == 0
    assert (out / "lungs.csv").read_text() == (whole / "lungs.csv").read_text()
    (out / "lungs.csv").write_text("path,mask,wid")  # killed while writing the header
    assert main([*argv, "--resume"]) == 0
    assert (out / "lungs.csv").read_text() == (whole / "lungs.csv").read_text()


def test_segment_train_smoke_writes_a_loadable_segmenter(data_root, tmp_path):
    out = tmp_path / "seg"
    args = ["segment", "train", "--root", str(data_root), "--out", str(out), "--epochs", "1", "--max-images", "6",
            "--image-size", "64", "--batch-size", "4"]  # fmt: skip
    assert main(args) == 0
    for name in ("model.safetensors", "config.json", "model.onnx", "history.csv"):
        assert (out / name).is_file()
    seg = load_segmenter(out, backend="onnx")
    assert seg.preprocessing.image_size == 64
    assert seg.predict(np.full((80, 90), 0.5, np.float32)).shape == (80, 90)


def test_guard_warns_when_no_plausible_lung_fields():
    from covidxray.imageio import LoadedImage
    from covidxray.prediction.guard import InputGuard

    rng = np.random.default_rng(0)
    img = LoadedImage((rng.random((300, 300)) * 0.6 + 0.2).astype(np.float32), "png", 8, "L")
    guard = InputGuard()
    assert not any("lung" in w for w in guard.check(img, None, lung_facts(two_lungs())))
    one = two_lungs()
    one[:, 60:] = False
    warnings = guard.check(img, None, lung_facts(one))
    assert any(
        w.startswith("no plausible lung fields: lung fields cover") and "1 region" in w for w in warnings
    )


def test_explanation_outlines_the_lungs_and_measures_the_in_lung_share(jsrt_pairs):
    import io

    import covidxray

    model = covidxray.load_model()  # the shipped model: its Grad-CAM is not flat
    e = model.explanation(jsrt_pairs[0].image)
    assert e.label in model.classes and 0.0 <= e.lung_share <= 1.0
    rgb = np.asarray(Image.open(io.BytesIO(e.png)).convert("RGB"))
    cyan = (rgb[..., 0] == 0) & (rgb[..., 1] == 229) & (rgb[..., 2] == 255)
    assert cyan[:512].sum() > 200  # the lung outline drawn over the heatmap


def test_lungcrop_margin_is_a_training_option_that_widens_the_crop():
    # --lungcrop-margin reaches TrainConfig and its preprocessing (so the bundle and the cache key), and acts
    import argparse

    from covidxray.training.cli import add_train_flags, given_train_options
    from covidxray.training.config import ConfigError, TrainConfig

    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    given = given_train_options(parser.parse_args(["--resize", "lungcrop", "--lungcrop-margin", "0.25"]))
    assert given == {"resize": "lungcrop", "lungcrop_margin": 0.25}
    wide = TrainConfig(**given).preprocessing()
    narrow = TrainConfig(resize="lungcrop", lungcrop_margin=0.0).preprocessing()
    assert TrainConfig(resize="lungcrop").preprocessing().lungcrop_margin == 0.1  # the shipped recipe's
    assert wide.lungcrop_margin == 0.25 and wide.cache_key() != narrow.cache_key()
    mask = two_lungs()
    img = np.where(mask, 0.3, 0.8).astype(np.float32)
    assert narrow.crop_box(img, mask) == (15, 20, 105, 80)  # the lung fields' own box
    assert wide.crop_box(img, mask) == (0, 5, 120, 95)  # widened by a quarter of it (clipped to the image)
    # the narrow crop is lungs edge to edge; the wide one shows the body around them
    assert (narrow.canonical(img, mask)[:, 0] < 128).mean() > (wide.canonical(img, mask)[:, 0] < 128).mean()
    assert Preprocessing.from_dict(wide.to_dict()).lungcrop_margin == 0.25  # what a bundle stores
    with pytest.raises(ConfigError, match="lungcrop_margin"):
        TrainConfig(resize="lungcrop", lungcrop_margin=0.7)
