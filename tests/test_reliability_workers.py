"""#14 item 10: what ``--workers`` changes in ``covidxray run`` -- the processes that fingerprint the images for the
manifest and decode them into the cache -- gives the same bytes for any worker count, on real images of every
collection (JPEG and PNG of many sizes). Training itself never uses the workers (``tests/test_training_generalization
.py`` trains with 0 and 2 workers to bit-identical weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covidxray.data.cache import load_cache
from covidxray.data.fingerprint import fingerprint_files
from covidxray.preprocess import Preprocessing


def real_images(root: Path, per_folder: int = 4) -> list[Path]:
    folders = ["covid-chestxray-dataset/images", "COVID-19_Radiography_Dataset/COVID",
               "COVID-19_Radiography_Dataset/Normal", "chest_xray/train/PNEUMONIA", "chest_xray/test/NORMAL"]  # fmt: skip
    found = []
    for f in folders:
        files = sorted(p for p in (root / f).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        found += files[:: max(1, len(files) // per_folder)][:per_folder]
    return found


def test_manifest_fingerprints_and_cache_bytes_do_not_depend_on_workers(data_root: Path, tmp_path: Path):
    paths = real_images(data_root)
    assert len(paths) >= 16
    one, two = fingerprint_files(paths, workers=1), fingerprint_files(paths, workers=2)
    assert one == two and all(getattr(f, "sha1", None) for f in one)
    df = pd.DataFrame({"path": [str(p.relative_to(data_root)) for p in paths], "sha1": [f.sha1 for f in one]})
    df.attrs["root"] = str(data_root)
    pre = Preprocessing(image_size=96)
    caches = {w: load_cache(df, pre, tmp_path / f"w{w}", workers=w, progress=False) for w in (1, 2)}
    files = {w: next((tmp_path / f"w{w}").glob("*.npy")) for w in (1, 2)}
    assert (
        files[1].name == files[2].name
    )  # the same cache file name: a run finds it whatever its worker count
    assert files[1].read_bytes() == files[2].read_bytes()
    assert caches[1].shape == (len(paths), 96, 96) and np.ptp(caches[1]) > 0


def test_saving_the_same_weights_gives_the_same_file_bytes(tiny_bundle: Path, tmp_path: Path):
    """The weights file's bytes (hence ``weights_version`` and the pipeline's step stamps) follow the tensors
    only: safetensors wrote a two-key metadata map in a random order, so equal weights hashed differently."""
    from covidxray.bundle import load_bundle, save_bundle

    bundle = load_bundle(tiny_bundle)
    saved = {save_bundle(tmp_path / f"b{i}", bundle.model, bundle.config).joinpath("model.safetensors").read_bytes()
             for i in range(8)}  # fmt: skip
    assert len(saved) == 1
