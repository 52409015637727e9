"""build_manifest / read_manifest on a tiny mixed root: rejects, duplicate groups, selection, splits, sidecar."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxray.data.manifest import COLUMNS, build_manifest, read_manifest, rejects_path, sidecar_path
from covidxray.imageio import load_image
from test_data_trees import cohen_tree, kermany_tree, picture, radiography_tree, save, save_dicom_monochrome1

COHEN_ROWS = [
    ("1", "COVID-19", "PA", "X-ray", "a.jpg", "CC BY 4.0", True),
    ("1", "COVID-19, ARDS", "PA", "X-ray", "b.jpg", "", True),
    ("2", "No Finding", "AP", "X-ray", "c.png", "", True),
    ("3", "SARS", "AP Supine", "X-ray", "d.jpg", "", True),
    ("4", "COVID-19", "L", "X-ray", "e.jpg", "", True),
    ("5", "COVID-19", "PA", "X-ray", "absent.jpg", "", False),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cohen + kermany + radiography, with copies across them and four bad files in radiography."""
    root = tmp_path_factory.mktemp("data")
    cohen = cohen_tree(root, COHEN_ROWS, first_seed=100)
    kermany = kermany_tree(root, first_seed=200)
    radio = radiography_tree(root, {"COVID": 4, "Normal": 4, "Lung_Opacity": 2}, first_seed=300)
    # near copy: cohen a.jpg resized to 150 px and re-encoded as PNG, as the Radiography COVID folder does
    near = Image.open(cohen / "images" / "a.jpg").convert("L").resize((150, 150), Image.Resampling.BILINEAR)
    near.save(radio / "COVID" / "COVID-20.png")
    # exact copy of a Kermany normal
    shutil.copy(kermany / "train" / "NORMAL" / "IM-0117-0001.jpeg", radio / "Normal" / "Normal-20.jpeg")
    # the same picture as Normal-1.png stored as a MONOCHROME1 DICOM (0 = white): must decode the right way up
    save_dicom_monochrome1(
        radio / "Normal" / "Normal-21.dcm", np.asarray(Image.open(radio / "Normal" / "Normal-1.png"))
    )
    # bad files: zero bytes, a truncated JPEG, a thumbnail, text with an image name
    (radio / "COVID" / "COVID-30.png").write_bytes(b"")
    data = (radio / "COVID" / "COVID-1.png").read_bytes()
    save(radio / "COVID" / "COVID-31.jpg", picture(999), quality=90)
    jpeg = (radio / "COVID" / "COVID-31.jpg").read_bytes()
    (radio / "COVID" / "COVID-31.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    save(radio / "Lung_Opacity" / "Lung_Opacity-30.png", picture(998, size=32))
    (radio / "Normal" / "Normal-30.png").write_text("<html>not an image</html>")
    assert data  # the original is untouched
    return root


@pytest.fixture(scope="module")
def manifest(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_manifest(root, tmp_path_factory.mktemp("out") / "manifest.csv", workers=2)


def _group_of(df: pd.DataFrame, name: str) -> int:
    return int(df.loc[df["path"].str.endswith(name), "dup_group"].iloc[0])


def test_manifest_columns_labels_and_sidecar(root: Path, manifest: Path):
    df = read_manifest(manifest)
    assert tuple(df.columns) == COLUMNS
    assert df.attrs["root"] == str(root.absolute())
    assert df.attrs["manifest_sha1"] == hashlib.sha1(manifest.read_bytes()).hexdigest()
    # 4 frontal cohen + 8 kermany + 10 + 3 copies in radiography
    assert df.groupby("source").size().to_dict() == {"cohen": 4, "kermany": 8, "radiography": 13}
    assert set(df["label"]) == {"covid", "normal", "pneumonia"}
    assert df["image_id"].is_unique and df["patient_id"].str.contains(":").all()
    assert (df["width"] >= 64).all() and set(df["format"]) == {"jpeg", "png", "dicom"}
    for rel in df["path"]:
        assert (root / rel).is_file()
    side = json.loads(sidecar_path(manifest).read_text())
    assert side["root"] == str(root.absolute()) and side["counts"]["images"] == len(df)
    assert side["counts"]["excluded"]["cohen"] == {"view:L": 1}


def test_bad_and_missing_files_are_rejects_with_reasons(manifest: Path):
    rejects = pd.read_csv(rejects_path(manifest))
    assert list(rejects.columns) == ["path", "source", "reason", "detail"]
    got = {Path(p).name: reason for p, reason in zip(rejects["path"], rejects["reason"], strict=True)}
    assert got == {
        "absent.jpg": "missing",
        "COVID-30.png": "empty",
        "COVID-31.jpg": "truncated",
        "Lung_Opacity-30.png": "too_small",
        "Normal-30.png": "not_an_image",
    }
    side = json.loads(sidecar_path(manifest).read_text())
    assert side["counts"]["rejects"] == {
        "missing": 1,
        "empty": 1,
        "truncated": 1,
        "too_small": 1,
        "not_an_image": 1,
    }


def test_exact_near_and_dicom_copies_share_a_duplicate_group(manifest: Path):
    df = read_manifest(manifest)
    assert _group_of(df, "images/a.jpg") == _group_of(df, "COVID-20.png")  # resized + re-encoded
    assert _group_of(df, "IM-0117-0001.jpeg") == _group_of(df, "Normal-20.jpeg")  # byte copy
    assert _group_of(df, "Normal-1.png") == _group_of(df, "Normal-21.dcm")  # MONOCHROME1 decoded upright
    sizes = df.groupby("dup_group").size()
    assert sorted(sizes[sizes > 1].tolist()) == [2, 2, 2]  # distinct pictures are never merged


def test_dicom_monochrome1_decodes_like_its_png(root: Path):
    radio = root / "COVID-19_Radiography_Dataset" / "Normal"
    dicom, png = load_image(radio / "Normal-21.dcm"), load_image(radio / "Normal-1.png")
    assert dicom.format == "dicom" and dicom.original_mode == "MONOCHROME1"
    assert np.corrcoef(dicom.pixels.ravel(), png.pixels.ravel())[0, 1] > 0.99


def test_splits_are_patient_and_group_disjoint(manifest: Path):
    df = read_manifest(manifest)
    assert set(df["split"]) <= {"train", "val", "test"}
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    assert (df.groupby("dup_group")["split"].nunique() == 1).all()
    # copies without patient ids share a pseudo-patient per duplicate group
    radio = df[df["source"] == "radiography"]
    assert radio.groupby("dup_group")["patient_id"].nunique().eq(1).all()


def test_views_and_labels_select_the_seeds_rows(root: Path, tmp_path: Path):
    df = read_manifest(build_manifest(root, tmp_path / "m.csv", views=["PA"], labels=["covid"], workers=1))
    assert df["path"].tolist() == [
        "covid-chestxray-dataset/images/a.jpg"
    ]  # not "COVID-19, ARDS", not radiography


def test_holdout_source_goes_to_test_whole(root: Path, tmp_path: Path):
    df = read_manifest(build_manifest(root, tmp_path / "m.csv", holdout_source="radiography", workers=1))
    assert (df.loc[df["source"] == "radiography", "split"] == "test").all()
    # images copied into radiography follow their copies into test, with their patients' other images (b.jpg)
    others_in_test = df.loc[(df["source"] != "radiography") & (df["split"] == "test"), "path"]
    assert sorted(others_in_test.str.rsplit("/", n=1).str[-1]) == ["IM-0117-0001.jpeg", "a.jpg", "b.jpg"]


def test_balance_equalises_labels_within_each_split(root: Path, tmp_path: Path):
    out = build_manifest(root, tmp_path / "m.csv", balance=True, workers=1)
    df = read_manifest(out)
    for _, part in df.groupby("split"):
        counts = part["label"].value_counts()
        assert counts.max() - counts.min() <= 1, counts  # whole patients: at most one off
    side = json.loads(sidecar_path(out).read_text())
    assert side["counts"]["excluded"]["*"]["balanced_out"] == 25 - len(df) > 0


def test_same_seed_same_split_other_seed_may_differ(root: Path, manifest: Path, tmp_path: Path):
    again = read_manifest(build_manifest(root, tmp_path / "m.csv", workers=1))
    assert again["split"].tolist() == read_manifest(manifest)["split"].tolist()


def test_saved_models_name_their_data_root_without_this_machines_path(tmp_path, monkeypatch):
    import json

    from covidxray.bundle import DEFAULT_MODEL_DIR
    from covidxray.data.manifest import root_label

    (tmp_path / "repo").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    assert root_label(tmp_path / "shared" / "data") == "../shared/data"
    assert root_label("/elsewhere/xrays") == "xrays"  # far from the working directory: its folder name
    shipped = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["data"]["root"]
    assert not Path(shipped).is_absolute()
