"""patient_split: disjointness as a property test, reproducibility, stratification, holdout and balance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covidxray.data.dedup import duplicate_groups, hamming, near_pairs
from covidxray.data.split import patient_split

LABELS = ("covid", "normal", "pneumonia")
SOURCES = ("a", "b", "c")


@st.composite
def frames(draw) -> pd.DataFrame:
    n = draw(st.integers(1, 80))
    ints = st.lists(st.integers(0, 25), min_size=n, max_size=n)
    patients, groups = draw(ints), draw(ints)
    labels = draw(st.lists(st.sampled_from(LABELS), min_size=n, max_size=n))
    sources = draw(st.lists(st.sampled_from(SOURCES), min_size=n, max_size=n))
    return pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "patient_id": [f"{s}:{p}" for s, p in zip(sources, patients, strict=True)],
            "dup_group": groups,
            "label": labels,
            "source": sources,
        }
    )


@settings(max_examples=80, deadline=None)
@given(df=frames(), seed=st.integers(0, 3), holdout=st.sampled_from([None, "a"]), balance=st.booleans())
def test_no_patient_or_duplicate_group_spans_two_splits(df, seed, holdout, balance):
    if holdout is not None and holdout not in set(df["source"]):
        holdout = None
    split = patient_split(df, seed=seed, holdout_source=holdout, balance=balance)
    assert split.index.equals(df.index)
    assert set(split) <= {"train", "val", "test", ""}
    used = df.assign(split=split)
    if not balance:
        assert "" not in set(split)
    for column in ("patient_id", "dup_group"):
        assert (used.groupby(column)["split"].nunique() == 1).all()
    if holdout is not None:
        assert set(used.loc[used["source"] == holdout, "split"]) <= {"test", ""}
    assert split.tolist() == patient_split(df, seed=seed, holdout_source=holdout, balance=balance).tolist()


def _many(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "patient_id": [f"p{k}" for k in rng.integers(0, n // 2, n)],
            "dup_group": np.arange(n),
            "label": rng.choice(LABELS, n, p=[0.2, 0.3, 0.5]),
            "source": rng.choice(SOURCES, n),
        }
    )


def test_fractions_hold_in_every_label_x_source_stratum():
    df = _many()
    split = patient_split(df, fractions=(0.7, 0.15, 0.15), seed=1)
    shares = pd.crosstab([df["label"], df["source"]], split, normalize="index")
    assert np.allclose(shares["train"], 0.7, atol=0.06) and np.allclose(shares["test"], 0.15, atol=0.06)


def test_row_order_does_not_change_the_split_but_the_seed_does():
    df = _many(600)
    split = patient_split(df, seed=0)
    shuffled = df.sample(frac=1.0, random_state=3)
    assert patient_split(shuffled, seed=0).reindex(df.index).equals(split)
    assert not patient_split(df, seed=1).equals(split)


def test_bad_arguments_say_what_was_expected():
    df = _many(30)
    with pytest.raises(ValueError, match="fractions"):
        patient_split(df, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="holdout source 'zzz'"):
        patient_split(df, holdout_source="zzz")


def test_duplicate_groups_join_exact_and_near_copies_transitively():
    a, b, c, far = "0" * 64, "0" * 63 + "f", "0" * 56 + "ffffffff", "f" * 64
    assert hamming(a, b) == 4 and hamming(a, c) == 32 and hamming(a, far) == 256
    assert near_pairs([a, b, far], max_distance=4).tolist() == [[0, 1]]
    groups = duplicate_groups(["s1", "s2", "s1", "s3", "s4"], [a, far, far, c, "f" * 32 + "0" * 32])
    # 0~2 by sha1, 2~1 by phash (exact), 0~3 at 32 bits; 4 is 128 bits from everything
    assert groups.tolist() == [0, 0, 0, 0, 1]
