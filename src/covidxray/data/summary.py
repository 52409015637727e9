"""A plain-text summary of a manifest: counts by source x label x split, what was left out, rejects, duplicates."""

from __future__ import annotations

import os

import pandas as pd

from covidxray.data.manifest import read_manifest, read_sidecar
from covidxray.vocabulary import SPLITS


def counts_table(df: pd.DataFrame) -> pd.DataFrame:
    """Images per (source, label) row and split column, with totals."""
    table = pd.crosstab([df["source"], df["label"]], df["split"], margins=True, margins_name="total")
    return table.reindex(columns=[s for s in (*SPLITS, "total") if s in table.columns])


def duplicate_stats(df: pd.DataFrame) -> dict[str, int]:
    """Duplicate groups with more than one image, the images in them and the groups spanning sources."""
    groups = df.groupby("dup_group")
    sizes = groups.size()
    cross = groups["source"].nunique()
    return {
        "groups": int((sizes > 1).sum()),
        "images": int(sizes[sizes > 1].sum()),
        "cross_source": int((cross > 1).sum()),
        "split_spanning": int((groups["split"].nunique() > 1).sum()),
    }


def format_summary(manifest: str | os.PathLike) -> str:
    """The summary printed by ``covidxray data build`` and ``covidxray data summary``."""
    df = read_manifest(manifest)
    side = read_sidecar(manifest)
    counts = side.get("counts", {})
    lines = [
        f"manifest {manifest}: {len(df)} images, {df['patient_id'].nunique()} patients, data root {df.attrs['root']}",
        "",
        counts_table(df).to_string(),
        "",
    ]
    excluded = counts.get("excluded", {})
    if any(excluded.values()):
        lines.append("left out (not errors):")
        for source, reasons in excluded.items():
            if reasons:
                lines.append(f"  {source}: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
    rejects = counts.get("rejects", {})
    total = sum(rejects.values())
    lines.append(
        f"rejects: {total}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(rejects.items())) + ")" if total else "")
        + (f" -> {side['rejects']}" if side.get("rejects") else "")
    )
    dup = duplicate_stats(df)
    lines.append(
        f"duplicate groups: {dup['groups']} holding {dup['images']} images, {dup['cross_source']} across sources, "
        f"{dup['split_spanning']} spanning splits"
    )
    if side.get("seconds") is not None:
        lines.append(f"built in {side['seconds']:.1f} s")
    return "\n".join(lines)
