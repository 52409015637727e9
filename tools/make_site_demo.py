"""Make a demonstration "hospital" folder for ``covidxray recalibrate`` from images in ../shared/data (symlinks).

JSRT (Japanese hospitals, adults, never seen by the shipped model) has no COVID-19 images, and re-tuning a
threshold needs both classes. The demonstration site therefore pairs

* ``normal/``: all 247 JSRT adults (93 without a nodule, 154 with a lung nodule; none has COVID-19 or pneumonia,
  so for the COVID-19 decision all are negatives), and
* ``covid/``: the COVID-19 images of the *test* split of the manifest the shipped model was trained on
  (patients the model never saw, from sources it did see: covid-chestxray-dataset and the Radiography Database),

with ``patients.csv`` beside them giving the manifest's patient ids (JSRT: one image per patient). Only symlinks
are made; no image is copied. Usage: ``python tools/make_site_demo.py --out runs/site``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/site"))
    ap.add_argument("--site", default="hospitalA")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--manifest", type=Path, default=Path("/work/main/runs/data/manifest.csv"))
    args = ap.parse_args()
    site = args.out / args.site
    for sub in ("normal", "covid"):
        (site / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for png in sorted((args.data / "JSRT" / "images").glob("*.png")):
        link = site / "normal" / png.name
        if not link.exists():
            link.symlink_to(png.resolve())
        rows.append((f"normal/{png.name}", f"jsrt-{png.stem}"))
    df = pd.read_csv(args.manifest)
    covid = df[(df["split"] == "test") & (df["label"] == "covid")]
    for r in covid.itertuples():
        src = args.data / r.path
        name = f"{r.source}-{Path(r.path).name}"
        link = site / "covid" / name
        if not link.exists():
            link.symlink_to(src.resolve())
        rows.append((f"covid/{name}", r.patient_id))
    with (site / "patients.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "patient_id"])
        w.writerows(rows)
    print(
        f"{site}: {sum(1 for r in rows if r[0].startswith('normal'))} normal, {len(covid)} covid (symlinks)"
    )


if __name__ == "__main__":
    main()
