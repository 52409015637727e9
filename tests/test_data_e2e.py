"""End to end on the real collections in ../shared/data: the manifest's counts and disjoint splits."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from covidxray.data.manifest import build_manifest, read_manifest, rejects_path, sidecar_path

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def real_manifest(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session into tmp (~40 s on 2 cores), every image opened."""
    return build_manifest(data_root, tmp_path_factory.mktemp("real") / "manifest.csv", workers=2)


def test_real_manifest_keeps_every_labelled_frontal_xray(real_manifest: Path):
    df = read_manifest(real_manifest)
    assert 9900 <= len(df) <= 10050
    by = df.groupby(["source", "label"]).size().to_dict()
    assert by[("kermany", "normal")] == 1432 and by[("kermany", "pneumonia")] == 3807
    assert by[("radiography", "covid")] == 1600 and by[("radiography", "pneumonia")] == 1000  # Lung_Opacity
    assert set(df["view"]) <= {"PA", "AP", "AP Supine", "AP Erect", "frontal"}
    counts = json.loads(sidecar_path(real_manifest).read_text())["counts"]
    assert (
        counts["excluded"]["cohen"]["modality:CT"] == 84
        and counts["excluded"]["cohen"]["unlabelled:todo"] == 78
    )


def test_real_manifest_lists_the_14_missing_xrays(real_manifest: Path):
    rejects = pd.read_csv(rejects_path(real_manifest))
    missing = rejects[rejects["reason"] == "missing"]
    assert len(missing) == 14 and set(missing["source"]) == {"cohen"}


def test_real_splits_are_patient_and_duplicate_group_disjoint(real_manifest: Path):
    df = read_manifest(real_manifest)
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    assert (df.groupby("dup_group")["split"].nunique() == 1).all()
    groups = df.groupby("dup_group")
    assert (groups["source"].nunique() > 1).sum() > 100  # the collections do share copies
    assert groups.size().max() <= 10  # and near-duplicate matching does not chain distinct images
    shares = df["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.03 and abs(shares["test"] - 0.15) < 0.03
