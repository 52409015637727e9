"""Patient-level train/val/test split, stratified by label x source, seeded and reproducible.

Rows are joined into *units*: images of one patient and every copy in one duplicate group (connected components
over both), so no patient and no duplicate group ever spans two splits. Each unit gets the stratum (label, source)
of its most common row; within a stratum, units are ordered by a seeded hash of their key (stable when other
units are added or removed) and cut by cumulative image count at the split fractions.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from covidxray.data.dedup import components
from covidxray.vocabulary import SPLITS


def split_units(df: pd.DataFrame) -> np.ndarray:
    """A unit number per row: rows sharing a patient_id or a dup_group share a unit."""
    n = len(df)
    pairs = []
    for column in ("patient_id", "dup_group"):
        codes = pd.factorize(df[column].astype(str))[0]
        first = pd.Series(np.arange(n)).groupby(codes).transform("min").to_numpy()
        pairs.append(np.stack([first, np.arange(n)], axis=1))
    return components(n, np.concatenate(pairs))


def _most_common(values: pd.Series) -> str:
    """The most common value, ties broken alphabetically (so row order never matters)."""
    counts = values.value_counts()
    return min(counts.index[counts == counts.max()])


def _order_key(seed: int, key: str) -> str:
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def _check_fractions(fractions: tuple[float, float, float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1 (train, val, test), got {fractions}"
        )
    return f


def patient_split(
    df: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    holdout_source: str | None = None,
    balance: bool = False,
) -> pd.Series:
    """Split name (train|val|test) per row of ``df`` (needs patient_id, dup_group, label, source).

    ``holdout_source`` puts every unit touching that source in test (cross-source evaluation); the other
    sources are split over train/val in the train:val proportion. ``balance`` keeps, within each split, as
    many images per label as the rarest label has (whole units, seeded); the rows left out get ``""``.
    """
    f = _check_fractions(fractions)
    if holdout_source is not None and holdout_source not in set(df["source"]):
        raise ValueError(
            f"holdout source {holdout_source!r} not in the data; sources: {sorted(set(df['source']))}"
        )
    units = split_units(df)
    table = pd.DataFrame(
        {
            "unit": units,
            "stratum": df["label"].astype(str).to_numpy() + "|" + df["source"].astype(str).to_numpy(),
        }
    )
    # a unit's key: its smallest image id (or row position) so the order does not depend on row order
    ids = df["image_id"].astype(str).to_numpy() if "image_id" in df else np.arange(len(df)).astype(str)
    table["id"] = ids
    per_unit = table.groupby("unit").agg(
        stratum=("stratum", _most_common), key=("id", "min"), size=("id", "size")
    )
    per_unit["split"] = ""
    if holdout_source is not None:
        held = table.loc[df["source"].to_numpy() == holdout_source, "unit"].unique()
        per_unit.loc[held, "split"] = "test"
        f = np.array([f[0], f[1], 0.0]) / (f[0] + f[1])
    bounds = np.cumsum(f)[:2]
    free = per_unit[per_unit["split"] == ""].copy()
    free["order"] = [_order_key(seed, k) for k in free["key"]]
    for _, group in free.sort_values("order").groupby("stratum", sort=True):
        middle = (group["size"].cumsum() - group["size"] / 2) / group["size"].sum()
        per_unit.loc[group.index, "split"] = np.array(SPLITS)[
            np.searchsorted(bounds, middle.to_numpy(), side="right")
        ]
    if balance:
        per_unit["label"] = per_unit["stratum"].str.split("|").str[0]
        per_unit["order"] = [_order_key(seed + 1, k) for k in per_unit["key"]]
        _balance(per_unit)
    return pd.Series(per_unit.loc[units, "split"].to_numpy(), index=df.index, name="split")


def _balance(per_unit: pd.DataFrame) -> None:
    """Within each split, drop whole units (set split "") until every label has the rarest label's count."""
    for split in SPLITS:
        in_split = per_unit[per_unit["split"] == split]
        counts = in_split.groupby("label")["size"].sum()
        if len(counts) < 2:
            continue
        target = counts.min()
        for _, group in in_split.sort_values("order").groupby("label"):
            kept = group["size"].cumsum() <= target
            per_unit.loc[group.index[~kept.to_numpy()], "split"] = ""
