"""Which rows a run trains on (task classes, holdout source, empty splits), on a tiny made-up manifest.

``make_manifest`` is shared by the other ``test_training*`` files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidxray.data.manifest import COLUMNS
from covidxray.training.config import TrainConfig
from covidxray.training.dataset import (
    DataError,
    check_splits,
    holdout_copies,
    select_split,
    split_counts,
)

LABELS = ("covid", "normal", "pneumonia")


def _image(label: str, source: str, i: int, size: int) -> np.ndarray:
    """Grey noise with a label-specific mark (so a tiny CNN can learn something) and a source-specific tint."""
    rng = np.random.default_rng([LABELS.index(label), ord(source), i])
    img = rng.normal(0.45 if source == "a" else 0.55, 0.08, (size, size))
    if label == "covid":
        img[size // 4 : size // 2, size // 4 : size // 2] += 0.35
    elif label == "pneumonia":
        img[::4] += 0.25
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_manifest(root: Path, per_group: int = 8, size: int = 72, val_every: int = 4) -> Path:
    """PNGs under ``root`` for 3 labels x 2 sources and a manifest CSV with every manifest column."""
    rows = []
    for label in LABELS:
        for source in ("a", "b"):
            for i in range(per_group):
                rel = Path(source) / label / f"{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_image(label, source, i, size)).save(root / rel)
                row = dict.fromkeys(COLUMNS, "")
                row.update(
                    image_id=f"{source}-{label}-{i}",
                    path=str(rel),
                    label=label,
                    patient_id=f"{source}:{label}{i}",
                    source=source,
                    width=size,
                    height=size,
                    dup_group=len(rows),
                    sha1=hashlib.sha1((root / rel).read_bytes()).hexdigest(),
                    split="val" if i % val_every == 0 else "train",
                )
                rows.append(row)
    path = root / "manifest.csv"
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def manifest_df(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from covidxray.data.manifest import read_manifest

    return read_manifest(make_manifest(tmp_path_factory.mktemp("tiny")))


def test_three_class_task_keeps_every_train_row(manifest_df: pd.DataFrame) -> None:
    cfg = TrainConfig(manifest="m.csv")
    train = select_split(manifest_df, cfg, "train")
    assert len(train) == 36 and np.bincount(train.targets).tolist() == [12, 12, 12]


def test_binary_task_drops_pneumonia_and_rest_merges_it(manifest_df: pd.DataFrame) -> None:
    binary = select_split(manifest_df, TrainConfig(manifest="m", classes="covid,normal"), "train")
    assert len(binary) == 24 and set(manifest_df.iloc[binary.positions]["label"]) == {"covid", "normal"}
    rest = select_split(manifest_df, TrainConfig(manifest="m", classes="covid,rest"), "train")
    assert np.bincount(rest.targets).tolist() == [12, 24]


def test_holdout_source_leaves_that_source_out(manifest_df: pd.DataFrame) -> None:
    cfg = TrainConfig(manifest="m", holdout_source="b")
    train, val = select_split(manifest_df, cfg, "train"), select_split(manifest_df, cfg, "val")
    assert set(train.sources) == {"a"} and set(val.sources) == {"a"}
    counts = split_counts(manifest_df, [train, val])
    assert counts["train"] == {"a": {"covid": 6, "normal": 6, "pneumonia": 6}}


def test_holdout_source_also_leaves_out_its_copies_in_other_sources(manifest_df: pd.DataFrame) -> None:
    # a's covid 1 (train) and a's normal 4 (val) are copies of b's images (same duplicate group), as the
    # Radiography Database holds covid-chestxray-dataset images: held out with b, they must not train or validate
    df = manifest_df.copy()
    copy_of = {"a-covid-1": "b-covid-3", "a-normal-4": "b-normal-5"}
    for a_id, b_id in copy_of.items():
        df.loc[df["image_id"] == a_id, "dup_group"] = df.loc[df["image_id"] == b_id, "dup_group"].item()
    copies = holdout_copies(df, "b")
    assert sorted(df.loc[copies, "image_id"]) == sorted(copy_of)
    cfg = TrainConfig(manifest="m", holdout_source="b")
    train, val = select_split(df, cfg, "train"), select_split(df, cfg, "val")
    used = set(df.iloc[np.concatenate([train.positions, val.positions])]["image_id"])
    assert not used & set(copy_of) and len(train) == 17 and len(val) == 5
    # the other way round: holding out a leaves out b's two copies of a's images (both in train)
    kept_b = select_split(df, TrainConfig(manifest="m", holdout_source="a"), "train")
    assert set(kept_b.sources) == {"b"} and len(kept_b) == 16
    assert {"b-covid-3", "b-normal-5"}.isdisjoint(df.iloc[kept_b.positions]["image_id"])
    # -1 is "no group", not one group shared by every row that has it
    ungrouped = df.assign(dup_group=-1)
    assert not holdout_copies(ungrouped, "b").any()
    # a hand-made manifest without duplicate groups: the source alone is held out
    assert not holdout_copies(df.drop(columns="dup_group"), "b").any()


def test_empty_train_split_and_unknown_holdout_are_refused(manifest_df: pd.DataFrame) -> None:
    cfg = TrainConfig(manifest="m")
    no_train = manifest_df.assign(split="val")
    with pytest.raises(DataError, match="train split has no rows"):
        check_splits(no_train, cfg, select_split(no_train, cfg, "train"), select_split(no_train, cfg, "val"))
    no_covid = manifest_df[~((manifest_df["label"] == "covid") & (manifest_df["split"] == "train"))]
    with pytest.raises(DataError, match=r"no rows of class\(es\) \['covid'\]"):
        check_splits(no_covid, cfg, select_split(no_covid, cfg, "train"), select_split(no_covid, cfg, "val"))
    cfg = TrainConfig(manifest="m", holdout_source="zzz")
    with pytest.raises(DataError, match="holdout source 'zzz' is not in the manifest"):
        check_splits(
            manifest_df, cfg, select_split(manifest_df, cfg, "train"), select_split(manifest_df, cfg, "val")
        )
