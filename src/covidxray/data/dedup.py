"""Duplicate groups: exact copies (same sha1) and near copies (phash within :data:`PHASH_DISTANCE` bits).

Near copies are the same radiograph re-encoded (JPEG <-> PNG), resized or lightly re-windowed, as found across
the public collections (Kermany normals inside the Radiography Database, covid-chestxray-dataset images inside
its COVID folder). Pairs are linked and joined transitively (connected components, i.e. union-find), so a group
holds every copy of an image wherever it came from.

Threshold: Hamming distance <= 32 of 256 bits (imagehash's 16x16 DCT phash of the canonical 224-px
equalised grey image, see :mod:`covidxray.data.fingerprint`). Measured on the ~10k images here: 517 pairs at
0-14 bits, a sparse gap at 16-44 bits (of 24 pairs at 16-30 bits looked at, every one was the same radiograph
re-cropped, re-encoded or re-windowed), the first distinct radiographs (two Kermany children) at 36 bits, then
the bulk of unrelated images from ~44 bits on. The 64-bit phash was too coarse: at <= 4 bits it chained
distinct pediatric images into groups of 40-60. See BENCHMARKS.md "## Data".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

PHASH_DISTANCE = 32


def phash_bits(phashes: Sequence[str]) -> np.ndarray:
    """Equal-length hex phash strings (a multiple of 16 digits) -> uint64 array (N, digits / 16)."""
    phashes = list(phashes)
    width = len(phashes[0]) if phashes else 16
    if any(len(h) != width for h in phashes) or width % 16:
        raise ValueError("phashes must be hex strings of one length, a multiple of 16 digits")
    words = [[int(h[k : k + 16], 16) for k in range(0, width, 16)] for h in phashes]
    return np.array(words, dtype=np.uint64).reshape(len(phashes), width // 16)


def hamming(a: str, b: str) -> int:
    """Bits differing between two hex phashes."""
    return int(np.bitwise_count(phash_bits([a]) ^ phash_bits([b])).sum())


def near_pairs(phashes: Sequence[str], max_distance: int = PHASH_DISTANCE, block: int = 256) -> np.ndarray:
    """Index pairs (i < j) whose phashes differ in at most ``max_distance`` bits, shape (P, 2)."""
    bits = phash_bits(phashes)
    found = []
    for start in range(0, len(bits), block):
        rows = bits[start : start + block]
        dist = np.bitwise_count(rows[:, None, :] ^ bits[None, :, :]).sum(axis=-1, dtype=np.int64)
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def exact_pairs(sha1: Sequence[str]) -> np.ndarray:
    """Pairs linking every file to the first file with the same sha1, shape (P, 2)."""
    codes = pd.Series(pd.factorize(pd.Series(list(sha1)))[0])
    first = codes.groupby(codes).transform(lambda s: s.index[0]).to_numpy()
    idx = np.arange(len(codes))
    keep = first != idx
    return np.stack([first[keep], idx[keep]], axis=1)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes linked by ``pairs``: a component number per node."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    pairs = pairs.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def duplicate_groups(
    sha1: Sequence[str], phashes: Sequence[str], max_distance: int = PHASH_DISTANCE
) -> np.ndarray:
    """A duplicate group number per image: equal for exact or (transitively) near copies, in first-seen order."""
    pairs = np.concatenate([exact_pairs(sha1), near_pairs(phashes, max_distance)])
    comp = components(len(sha1), pairs)
    return pd.factorize(pd.Series(comp))[0]


NO_GROUP = frozenset({"", "nan", "<NA>", "None"})


def group_ids(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's duplicate group as text, and whether it has one: ``dup_group`` empty, missing or negative (manifests
    made by hand or by ``tools/jsrt_manifest.py`` use -1) means no group. Without the column no row has one."""
    if "dup_group" not in df.columns:
        return np.full(len(df), "", dtype=object), np.zeros(len(df), dtype=bool)
    groups = df["dup_group"].astype(str).to_numpy()
    known = np.asarray([g not in NO_GROUP and not g.startswith("-") for g in groups], dtype=bool)
    return groups, known
