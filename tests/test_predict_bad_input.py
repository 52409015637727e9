"""Every bad input gets a specific message and exit code from `covidxray predict`, and is a row in a batch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import xray_like
from covidxray.cli import main
from covidxray.errors import EXIT_INPUT, EXIT_MODEL, EXIT_REFUSED, EXIT_USAGE


def make_dicom(path: Path, pixels: np.ndarray | None = None, compressed: bool = False) -> Path:
    """An uncompressed 12-bit DICOM, one with a JPEG 2000 transfer syntax and broken data, or one without pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless if compressed else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "TEST"
    if pixels is not None or compressed:
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 96, 96, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if compressed:
            ds.PixelData = encapsulate([b"\x00\x01not a jpeg 2000 codestream" * 8])
        else:
            ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def bad_inputs(d: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (file, loader reason code, words the message must contain)."""
    (d / "text.png").write_text("this is not an image\n")
    (d / "zero.png").write_bytes(b"")
    full = d / "full.jpg"
    Image.fromarray(xray_like(128)).save(full, quality=90)
    (d / "truncated.jpg").write_bytes(full.read_bytes()[:1500])
    full.unlink()
    Image.new("L", (1, 1), 128).save(d / "one_pixel.png")
    make_dicom(d / "compressed.dcm", compressed=True)
    make_dicom(d / "no_pixels.dcm")
    return {
        "text": (d / "text.png", "not_an_image", "not a readable"),
        "zero": (d / "zero.png", "empty", "0 bytes"),
        "truncated": (d / "truncated.jpg", "truncated", "truncated"),
        "one_pixel": (d / "one_pixel.png", "too_small", "1x1 px"),
        "compressed_dicom": (d / "compressed.dcm", "unsupported_dicom", "cannot be decoded"),
        "no_pixel_dicom": (d / "no_pixels.dcm", "unsupported_dicom", "no 'Pixel Data'"),
    }


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    bad_inputs(d)
    return d


@pytest.mark.parametrize(
    "name", ["text", "zero", "truncated", "one_pixel", "compressed_dicom", "no_pixel_dicom"]
)
def test_each_bad_file_exits_3_with_its_message(name, bad_dir, tiny_bundle, capsys):
    path, _, words = bad_inputs(bad_dir)[name]
    assert main(["predict", "--image", str(path), "--model", str(tiny_bundle)]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert str(path) in err and words in err


def test_api_reports_reason_codes_without_raising(bad_dir, tiny_bundle):
    import covidxray

    predictor = covidxray.load_model(tiny_bundle)
    cases = bad_inputs(bad_dir)
    preds = predictor.predict_batch([p for p, _, _ in cases.values()])
    assert [p.error_reason for p in preds] == [reason for _, reason, _ in cases.values()]
    assert all(p.label is None and p.probabilities == {} for p in preds)


def test_missing_file_and_folder_exit_3(tmp_path, tiny_bundle, capsys):
    assert main(["predict", "--image", str(tmp_path / "nope.png"), "--model", str(tiny_bundle)]) == EXIT_INPUT
    assert "file does not exist" in capsys.readouterr().err
    assert main(["predict", "--images", str(tmp_path / "nodir"), "--model", str(tiny_bundle)]) == EXIT_INPUT
    assert "folder does not exist" in capsys.readouterr().err


def test_empty_folder_and_empty_glob_exit_3(tmp_path, tiny_bundle, capsys):
    (tmp_path / "notes.txt").write_text("no images here")
    assert main(["predict", "--images", str(tmp_path), "--model", str(tiny_bundle)]) == EXIT_INPUT
    assert "folder holds no image files" in capsys.readouterr().err
    assert main(["predict", "--images", str(tmp_path / "*.png"), "--model", str(tiny_bundle)]) == EXIT_INPUT
    assert "no files match" in capsys.readouterr().err


def test_colour_photo_warns_and_strict_refuses_with_4(tmp_path, tiny_bundle, capsys):
    rng = np.random.default_rng(0)
    photo = np.zeros((200, 300, 3), np.uint8)
    photo[..., 0] = np.linspace(0, 255, 300)[None]
    photo[..., 1] = np.linspace(255, 0, 200)[:, None]
    photo[..., 2] = rng.integers(0, 255, (200, 300))
    path = tmp_path / "holiday.jpg"
    Image.fromarray(photo).save(path)
    assert main(["predict", "--image", str(path), "--model", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "warning: colour image" in out and "label:" in out
    assert main(["predict", "--image", str(path), "--model", str(tiny_bundle), "--strict"]) == EXIT_REFUSED
    assert "refused by the input guard: colour image" in capsys.readouterr().err


def test_batch_turns_bad_files_into_rows(bad_dir, tmp_path, tiny_bundle, xray_png, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in bad_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "good.png").write_bytes(xray_png.read_bytes())
    out = tmp_path / "preds.csv"
    args = [
        "predict",
        "--images",
        str(folder),
        "--model",
        str(tiny_bundle),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert len(rows) == 7
    assert rows["good.png"]["label"] in ("covid", "normal", "pneumonia") and not rows["good.png"]["error"]
    for name in ("text.png", "zero.png", "truncated.jpg", "one_pixel.png", "compressed.dcm", "no_pixels.dcm"):
        assert rows[name]["label"] == "" and rows[name]["p_covid"] == "" and rows[name]["error"], name
    err = capsys.readouterr().err
    assert "7 images: 1 predicted" in err and "6 could not be read" in err


def test_batch_with_nothing_readable_exits_3(bad_dir, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert (
        main(["predict", "--images", str(bad_dir), "--model", str(tiny_bundle), "--out", str(out)])
        == EXIT_INPUT
    )
    assert "none of the 6 images could be read" in capsys.readouterr().err
    assert len(list(csv.DictReader(out.open()))) == 6


def test_bad_model_paths_exit_5(tmp_path, xray_png, capsys):
    assert main(["predict", "--image", str(xray_png), "--model", str(tmp_path / "none")]) == EXIT_MODEL
    assert "model path does not exist" in capsys.readouterr().err
    assert main(["predict", "--image", str(xray_png), "--model", str(tmp_path)]) == EXIT_MODEL
    assert "no model here" in capsys.readouterr().err
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    assert main(["predict", "--image", str(xray_png), "--model", str(broken)]) == EXIT_MODEL
    assert "ONNX Runtime cannot load this file" in capsys.readouterr().err


def test_missing_default_model_says_how_to_get_one(xray_png, capsys, monkeypatch, tmp_path):
    import covidxray.bundle as bundle

    monkeypatch.setattr(bundle, "DEFAULT_MODEL_DIR", tmp_path / "no_default_model")
    assert main(["predict", "--image", str(xray_png)]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert "no default model is installed" in err and "covidxray run" in err


def test_default_model_predicts_a_real_xray(data_root, capsys):
    image = data_root / "COVID-19_Radiography_Dataset" / "COVID" / "COVID-1003.png"
    assert main(["predict", "--image", str(image), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        out["label"] in ("covid", "normal", "pneumonia")
        and abs(sum(out["probabilities"].values()) - 1) < 1e-4
    )


def test_usage_errors_exit_2(xray_png, tiny_bundle, capsys):
    assert (
        main(["predict", "--image", str(xray_png), "--out", "x.csv", "--model", str(tiny_bundle)])
        == EXIT_USAGE
    )
    assert main(["predict", "--image", str(xray_png), "--backend", "onnx", "--explain", "d"]) == EXIT_USAGE
    assert "needs the torch backend" in capsys.readouterr().err
