"""Who is in an image: children or adults, from what the collections and their metadata say.

COVID-19 X-ray classifiers are used on adults, and the collections mix in children: Kermany et al.'s pediatric
pneumonia collection (Guangzhou, ages 1-5) supplies most public "normal" and "pneumonia" images, and other
collections re-publish some of them (205 of the COVID-19 Radiography Database's normals are Kermany images,
re-encoded; the manifest's duplicate groups link them). A model can tell COVID-19 from a child's X-ray by the
child alone, so a figure over all images overstates what it does on adults; the evaluation reports adults
separately (:func:`covidxray.evaluation.evaluate.evaluate`, "Adults only").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from covidxray.data.dedup import group_ids

# Sources (by the manifest's source name, which for a known collection is its layout's name) whose every image is
# of a child, with what says so.
PEDIATRIC_SOURCES = {"kermany": "Kermany et al., Cell 2018: pediatric patients aged 1-5, Guangzhou"}
ADULT_AGE = 18

CHILDREN_RULE = (
    "children = images of a pediatric collection ("
    + "; ".join(f"{s}: {why}" for s, why in PEDIATRIC_SOURCES.items())
    + "), their copies in other collections (same duplicate group), and images whose metadata gives an age "
    f"under {ADULT_AGE}; adults = every other image (most collections give no age per image)"
)


def children(df: pd.DataFrame, by_age: bool = True) -> np.ndarray:
    """A boolean array over ``df``'s rows: True for an image of a child (:data:`CHILDREN_RULE`).

    ``df`` needs ``source``; ``dup_group`` (copies) and ``age`` (``by_age``) are used when present. Pass the whole
    manifest, not a split of it, so that a copy's pediatric twin is seen wherever it is.
    """
    source = df["source"].astype(str).to_numpy()
    child = np.isin(source, list(PEDIATRIC_SOURCES))
    groups, known = group_ids(df)
    child |= known & np.isin(groups, groups[child & known])
    if by_age and "age" in df.columns:
        age = pd.to_numeric(df["age"], errors="coerce").to_numpy(dtype=float)
        child |= np.nan_to_num(age, nan=np.inf) < ADULT_AGE
    return child
