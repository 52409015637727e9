"""Shared fixtures: tiny images the tests make, a tiny saved model, and the real data root (skipped if absent)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def xray_like(size: int = 96, seed: int = 0) -> np.ndarray:
    """A grey, chest-X-ray-ish uint8 image: dark lung fields, a bright mediastinum, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.55 + 0.35 * np.exp(-((xx - 0.5) ** 2) / 0.01)  # mediastinum
    for cx in (0.3, 0.7):
        img -= 0.3 * np.exp(-(((xx - cx) ** 2) / 0.02 + ((yy - 0.5) ** 2) / 0.08))  # lungs
    img += rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def dicom_bytes(pixels: np.ndarray, tags: dict | None = None, preamble: bool = True) -> bytes:
    """A 12-bit MONOCHROME2 DICOM of the image (no test file ships one), with extra ``tags`` (keyword -> value)
    and, with ``preamble=False``, without the 128-byte preamble and 'DICM' marker."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
        "CR",
    )
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble)
    return buf.getvalue()


@pytest.fixture
def xray_png(tmp_path: Path) -> Path:
    """One grey PNG that looks enough like a chest X-ray for the loader and the model."""
    path = tmp_path / "xray.png"
    Image.fromarray(xray_like()).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 3-class seed_cnn2 bundle at 64 px with random (seeded) weights -- a real model, not trained."""
    import torch

    from covidxray.bundle import BundleConfig, save_bundle
    from covidxray.models.base import XRayNet
    from covidxray.models.registry import create_model
    from covidxray.preprocess import Preprocessing

    torch.manual_seed(0)
    pre = Preprocessing(image_size=64)
    net = create_model("seed_cnn2", num_classes=3, in_channels=1, image_size=64)
    model = XRayNet(net, pre.mean, pre.std, num_outputs=3).eval()
    config = BundleConfig(
        architecture="seed_cnn2",
        architecture_kwargs={"image_size": 64},
        classes=["covid", "normal", "pneumonia"],
        preprocessing=pre,
    )
    out = tmp_path_factory.mktemp("bundle") / "model"
    save_bundle(out, model, config)
    return out


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real public collections; end-to-end tests skip cleanly where they are absent."""
    if not (DATA_ROOT / "covid-chestxray-dataset" / "metadata.csv").is_file():
        pytest.skip(f"real data not found at {DATA_ROOT}")
    return DATA_ROOT


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance with 2 CPUs, shared by every test of ``--engine ray`` (it takes seconds to start).

    Ray comes with the ``covidxray[ray]`` extra that ``make setup`` installs; a missing Ray fails these tests.
    """
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
