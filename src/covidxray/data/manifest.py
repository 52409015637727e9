"""One manifest for every collection under a data root: a CSV row per usable image, a rejects CSV, a JSON sidecar.

``build_manifest`` runs the data flow sources -> filter (views, labels) -> fingerprint (every file opened once,
across a process pool) -> duplicate groups -> patient split, and writes:

- ``manifest.csv``: the columns in :data:`COLUMNS`, paths relative to the data root;
- ``manifest.rejects.csv``: ``path, source, reason, detail`` for missing, empty, undecodable or tiny files;
- ``manifest.csv.json``: absolute data root, build arguments, counts (what was kept, left out and why) and the
  rejects path.

``read_manifest`` reads it back as a DataFrame with ``attrs["root"]`` and ``attrs["manifest_sha1"]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from covidxray.data.dedup import PHASH_DISTANCE, duplicate_groups
from covidxray.data.fingerprint import Failure, fingerprint_files
from covidxray.data.sources import Candidate, Reject, find_sources, scan_source
from covidxray.data.split import patient_split

FRONTAL_VIEWS = (
    "PA",
    "AP",
    "AP Supine",
    "AP Erect",
    "frontal",
)  # "frontal": a collection of frontal views only
COLUMNS = (
    "image_id", "path", "label", "finding", "subtype", "patient_id", "source", "view", "modality", "sex", "age",
    "license", "doi", "url", "width", "height", "format", "sha1", "phash", "dup_group", "split",
)  # fmt: skip
TEXT_COLUMNS = tuple(c for c in COLUMNS if c not in ("age", "width", "height", "dup_group"))
REJECT_COLUMNS = ("path", "source", "reason", "detail")


def sidecar_path(manifest: str | os.PathLike) -> Path:
    """``manifest.csv`` -> ``manifest.csv.json``."""
    return Path(f"{manifest}.json")


def rejects_path(manifest: str | os.PathLike) -> Path:
    """``manifest.csv`` -> ``manifest.rejects.csv``."""
    p = Path(manifest)
    return p.with_name(f"{p.stem}.rejects.csv")


def _select(
    candidates: list[Candidate], views: Sequence[str] | None, labels: Sequence[str] | None, counts: Counter
):
    """Keep the candidates with a wanted view and label; count the others by reason."""
    wanted_views = {v.lower() for v in (views or FRONTAL_VIEWS)}
    kept = []
    for c in candidates:
        if c.view.lower() not in wanted_views:
            counts[f"view:{c.view}"] += 1
        elif labels is not None and c.label not in labels:
            counts[f"label:{c.label}"] += 1
        elif labels is not None and c.combined_finding:
            counts["combined_finding"] += 1
        else:
            kept.append(c)
    return kept


def _row(c: Candidate, source: str, root: Path, fp) -> dict:
    rel = Path(os.path.relpath(c.path, root)).as_posix()
    return {
        "image_id": f"{source}/{rel}",
        "path": rel,
        "label": c.label,
        "finding": c.finding,
        "subtype": c.subtype,
        "patient_id": c.patient_id,
        "patient_known": c.patient_known,
        "source": source,
        "view": c.view,
        "modality": c.modality,
        "sex": c.sex,
        "age": c.age,
        "license": c.license,
        "doi": c.doi,
        "url": c.url,
        **asdict(fp),
    }


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _counts(df: pd.DataFrame, excluded: dict, rejects: list[Reject]) -> dict:
    groups = df.groupby("dup_group")
    sizes = groups.size()
    cross = groups["source"].nunique()
    by = df.groupby(["source", "label", "split"]).size()
    return {
        "images": len(df),
        "by_source_label_split": {"|".join(k): int(v) for k, v in by.items()},
        "by_source": {k: int(v) for k, v in df["source"].value_counts().sort_index().items()},
        "by_label": {k: int(v) for k, v in df["label"].value_counts().sort_index().items()},
        "by_split": {k: int(v) for k, v in df["split"].value_counts().sort_index().items()},
        "patients": int(df["patient_id"].nunique()),
        "duplicate_groups": int((sizes > 1).sum()),
        "duplicate_images": int(sizes[sizes > 1].sum()),
        "cross_source_groups": int((cross > 1).sum()),
        "excluded": excluded,
        "rejects": dict(Counter(r.reason for r in rejects)),
    }


def build_manifest(
    root: str | os.PathLike,
    out: str | os.PathLike = "runs/data/manifest.csv",
    views: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    holdout_source: str | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    balance: bool = False,
    workers: int = 2,
    layouts: Mapping[str, str] | None = None,
    label_map: Mapping[str, str] | None = None,
    sources: Iterable[str] | None = None,
    max_distance: int = PHASH_DISTANCE,
    reuse_fingerprints: bool = True,
    progress: bool = False,
) -> Path:
    """Build the manifest of every collection under ``root``; returns the manifest path.

    ``views`` defaults to the frontal views (:data:`FRONTAL_VIEWS`); ``labels`` (e.g. ``["covid"]``) keeps those
    labels, single-finding rows only. ``layouts`` maps a folder name to a layout (overriding detection),
    ``label_map`` maps class folder names of folder-per-class trees. Fingerprints are kept in
    ``fingerprints.csv`` beside the manifest so a rebuild only opens new or changed files
    (``reuse_fingerprints=False`` opens every file).
    """
    started = time.perf_counter()
    root = Path(root).absolute()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    found = find_sources(root, layouts=layouts, sources=sources)
    candidates: list[tuple[str, Candidate]] = []
    excluded: dict[str, dict[str, int]] = {}
    rejects: list[Reject] = []
    for source in found:
        scan = scan_source(source, label_map=label_map)
        counts = Counter(scan.excluded)
        kept = _select(scan.candidates, views, labels, counts)
        candidates += [(source.name, c) for c in kept]
        excluded[source.name] = dict(sorted(counts.items()))
        rejects += scan.rejects
    store = out.parent / "fingerprints.csv" if reuse_fingerprints else None
    prints = fingerprint_files(
        [c.path for _, c in candidates], workers=workers, store=store, progress=progress
    )
    rows = []
    for (source, c), fp in zip(candidates, prints, strict=True):
        if isinstance(fp, Failure):
            rejects.append(Reject(str(c.path), source, fp.reason, fp.detail))
        else:
            rows.append(_row(c, source, root, fp))
    if not rows:
        raise ValueError(f"no usable image under {root} with views={views} labels={labels}")
    df = pd.DataFrame(rows)
    df["dup_group"] = duplicate_groups(df["sha1"], df["phash"], max_distance)
    unknown = ~df["patient_known"].astype(bool)  # no patient ids: one pseudo-patient per duplicate group
    df.loc[unknown, "patient_id"] = (
        df.loc[unknown, "source"] + ":group" + df.loc[unknown, "dup_group"].astype(str)
    )
    df["split"] = patient_split(df, fractions, seed, holdout_source, balance)
    if balance:
        excluded["*"] = {"balanced_out": int((df["split"] == "").sum())}
        df = df[df["split"] != ""]
    df = df.loc[:, list(COLUMNS)]
    _write_csv(df, out)
    rej_path = rejects_path(out)
    _write_csv(pd.DataFrame([asdict(r) for r in rejects], columns=list(REJECT_COLUMNS)), rej_path)
    args = {
        "views": list(views) if views else None, "labels": list(labels) if labels else None,
        "holdout_source": holdout_source, "seed": seed, "fractions": list(fractions), "balance": balance,
        "layouts": dict(layouts or {}), "label_map": dict(label_map or {}), "sources": list(sources) if sources else None,
        "phash_max_distance": max_distance,
    }  # fmt: skip
    sidecar = {
        "root": str(root),
        "manifest": str(out.absolute()),
        "rejects": str(rej_path.absolute()),
        "sources": {s.name: {"layout": s.layout, "directory": str(s.directory)} for s in found},
        "args": args,
        "counts": _counts(df, excluded, rejects),
        "seconds": round(time.perf_counter() - started, 2),
    }
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2) + "\n")
    return out


def read_sidecar(path: str | os.PathLike) -> dict:
    """The manifest's JSON sidecar (empty dict when absent)."""
    side = sidecar_path(path)
    return json.loads(side.read_text()) if side.is_file() else {}


def root_label(root: str | os.PathLike) -> str:
    """How a saved model names the data root it was trained on, without this machine's absolute path: the root
    relative to the working directory when it lies beside it (``../shared/data``), else its folder name."""
    p = Path(root).absolute()
    rel = Path(os.path.relpath(p, Path.cwd())).as_posix()
    return rel if not rel.startswith("../..") else p.name


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV. ``attrs["root"]`` is the absolute data root (from the sidecar, else the CSV's
    folder) and ``attrs["manifest_sha1"]`` the sha1 of the CSV file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; build it with `covidxray data build`")
    data = path.read_bytes()
    df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a covidxray manifest: columns {', '.join(missing)} are missing")
    df["age"] = pd.to_numeric(df["age"], errors="coerce")
    df.attrs["root"] = read_sidecar(path).get("root") or str(path.parent.absolute())
    df.attrs["manifest_sha1"] = hashlib.sha1(data).hexdigest()
    return df
