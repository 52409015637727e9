"""Manifests for the "JSRT adults in training" row of the generalization ablation (issue #12, item 8).

JSRT is the project's only collection of adult non-COVID X-rays from a hospital no training image comes from, and
the leave-one-source-out folds train on very few adult normals when the Radiography Database is held out (cohen's
19). This row measures what part of JSRT's 93 images without nodules would bring as adult normals, while keeping
the rest of JSRT as a check:

- ``--out`` (e.g. ``runs/data/manifest_jsrt.csv``): the main manifest plus half of JSRT's non-nodule images
  (patients chosen by a hash of their id, fixed before looking), label ``normal``, source ``jsrt``, split
  train / val (about 6 : 1); paths are relative to the main manifest's data root, so the JSON sidecar is copied
  with the new manifest's name.
- ``--rest`` (e.g. ``runs/data/jsrt_rest.csv``): the other JSRT rows (the other non-nodule half and all nodule
  images), split ``test``, for ``benchmarks/generalization.py --jsrt``. They come from the same hospitals as the
  training half, so on this row the JSRT share is an in-source figure, not the out-of-source check of the others.

    .venv/bin/python benchmarks/jsrt_half.py --manifest runs/data/manifest.csv --jsrt runs/data/jsrt.csv \
        --out runs/data/manifest_jsrt.csv --rest runs/data/jsrt_rest.csv
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pandas as pd

from covidxray.data.manifest import read_sidecar, sidecar_path


def _bucket(patient_id: str) -> int:
    """A stable number 0-99 for a patient id."""
    return int(hashlib.sha1(patient_id.encode()).hexdigest()[:8], 16) % 100


def split_jsrt(jsrt: pd.DataFrame, jsrt_root: Path, data_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows with paths under ``data_root`` and train/val splits, the remaining rows as they were)."""
    b = jsrt["patient_id"].astype(str).map(_bucket)
    take = (jsrt["subtype"].astype(str) == "non-nodule") & (b < 50)
    train = jsrt[take].copy()
    rel = jsrt_root.resolve().relative_to(data_root.resolve())
    train["path"] = [str(rel / p) for p in train["path"]]
    train["split"] = ["val" if x < 7 else "train" for x in b[take]]
    return train, jsrt[~take].copy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, default=Path("runs/data/manifest.csv"))
    p.add_argument("--jsrt", type=Path, default=Path("runs/data/jsrt.csv"))
    p.add_argument("--out", type=Path, default=Path("runs/data/manifest_jsrt.csv"))
    p.add_argument("--rest", type=Path, default=Path("runs/data/jsrt_rest.csv"))
    a = p.parse_args(argv)
    main_side, jsrt_side = read_sidecar(a.manifest), read_sidecar(a.jsrt)
    if "root" not in main_side or "root" not in jsrt_side:
        raise SystemExit(
            f"{sidecar_path(a.manifest)} and {sidecar_path(a.jsrt)} must both name their data root"
        )
    df = pd.read_csv(a.manifest, dtype=str, keep_default_na=False)
    jsrt = pd.read_csv(a.jsrt, dtype=str, keep_default_na=False)
    train, rest = split_jsrt(jsrt, Path(jsrt_side["root"]), Path(main_side["root"]))
    pd.concat([df, train[df.columns]], ignore_index=True).to_csv(a.out, index=False)
    sidecar_path(a.out).write_text(
        json.dumps({**main_side, "manifest": str(a.out.resolve())}, indent=2) + "\n"
    )
    rest.to_csv(a.rest, index=False)
    sidecar_path(a.rest).write_text(json.dumps({**jsrt_side, "manifest": str(a.rest)}, indent=2) + "\n")
    counts = train.groupby("split").size().to_dict()
    print(f"{a.out}: {len(df)} + {len(train)} JSRT rows ({counts}); {a.rest}: {len(rest)} JSRT rows left out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
