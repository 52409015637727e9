"""Tiny collection trees in each supported layout, made in tmp_path by the data tests (no tests here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COHEN_HEADER = (
    "patientid,offset,sex,age,finding,survival,view,modality,date,location,folder,filename,doi,url,license"
)


def picture(seed: int, size: int = 96) -> np.ndarray:
    """A distinct grey uint8 image per seed: a random low-frequency field (unrelated seeds never look alike)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8), mode="L")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def save(path: Path, pixels: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kw)
    return path


def save_dicom_monochrome1(path: Path, pixels: np.ndarray) -> Path:
    """A 12-bit MONOCHROME1 DICOM of ``pixels`` (stored inverted, as MONOCHROME1 means 0 = white)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (4095 - pixels.astype(np.uint16) * 16).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def cohen_tree(root: Path, rows: list[tuple], first_seed: int = 100) -> Path:
    """``covid-chestxray-dataset/`` with metadata.csv rows (patientid, finding, view, modality, filename,
    license, exists); an image is written for each row whose ``exists`` is true."""
    d = root / "covid-chestxray-dataset"
    (d / "images").mkdir(parents=True, exist_ok=True)
    lines = [COHEN_HEADER]
    for i, (pid, finding, view, modality, filename, license_, exists) in enumerate(rows):
        lines.append(
            f'{pid},0,M,50,"{finding}",,{view},{modality},,,images,{filename},10.1/x,http://x,{license_}'
        )
        if exists:
            save(d / "images" / filename, picture(first_seed + i))
    (d / "metadata.csv").write_text("\n".join(lines) + "\n")
    return d


def kermany_tree(root: Path, first_seed: int = 200) -> Path:
    """``chest_xray/{train,test}/{NORMAL,PNEUMONIA}`` with 8 images from 6 patients."""
    d = root / "chest_xray"
    names = {
        "train/NORMAL": ["IM-0115-0001.jpeg", "NORMAL2-IM-0115-0001.jpeg", "IM-0117-0001.jpeg"],
        "train/PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person3_virus_7.jpeg"],
        "test/NORMAL": ["IM-0001-0001.jpeg"],
        "test/PNEUMONIA": ["person9_virus_20.jpeg"],
    }
    seed = first_seed
    for folder, files in names.items():
        for name in files:
            save(d / folder / name, picture(seed), quality=95)
            seed += 1
    return d


def radiography_tree(root: Path, counts: dict[str, int] | None = None, first_seed: int = 300) -> Path:
    """``COVID-19_Radiography_Dataset/{COVID,Normal,Lung_Opacity}`` with ``Class-N.png`` files."""
    d = root / "COVID-19_Radiography_Dataset"
    seed = first_seed
    for folder, n in (counts or {"COVID": 3, "Normal": 3, "Lung_Opacity": 2}).items():
        for k in range(1, n + 1):
            save(d / folder / f"{folder}-{k}.png", picture(seed))
            seed += 1
    return d
