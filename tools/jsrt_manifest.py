"""Write a manifest of ``../shared/data/JSRT``: 247 Japanese adults without COVID-19 or pneumonia.

JSRT is kept **out of training** on purpose: it is this project's external check of adult non-COVID chest X-rays
from hospitals none of the training collections come from (the share of JSRT images a model calls COVID-19 is
a false-positive rate on unseen adults). Every image is labelled ``normal`` in the manifest -- for this use, "not
COVID-19 and not pneumonia" -- with the JSRT ``state`` (non-nodule / benign / malignant) in ``finding`` and
``subtype``, so a report can separate the 93 images without nodules. ``split`` is ``test`` for every row.

    .venv/bin/python tools/jsrt_manifest.py [--root ../shared/data/JSRT] [--out runs/data/jsrt.csv]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

from covidxray.data.manifest import COLUMNS


def build(root: Path, out: Path) -> int:
    """Write ``out`` (+ its ``.json`` sidecar naming the data root); returns the number of rows."""
    meta = root / "jsrt_metadata.csv"
    if not meta.is_file():
        raise SystemExit(
            f"{meta} not found: give --root the JSRT folder (with images/ and jsrt_metadata.csv)"
        )
    rows = []
    with meta.open(newline="") as fh:
        for r in csv.DictReader(fh):
            rel = Path("images") / r["study_id"]
            image = root / rel
            if not image.is_file():
                print(f"skipped {image}: listed in {meta.name} but not there", file=sys.stderr)
                continue
            state = (r.get("state") or "").strip()
            rows.append(
                {
                    "image_id": f"jsrt/{r['study_id']}",
                    "path": str(rel),
                    "label": "normal",
                    "finding": state,
                    "subtype": state,
                    "patient_id": f"jsrt:{Path(r['study_id']).stem}",
                    "source": "jsrt",
                    "view": "frontal",
                    "modality": "X-ray",
                    "sex": (r.get("gender") or "").strip(),
                    "age": (r.get("age") or "").strip(),
                    "license": "JSRT: research and teaching",
                    "doi": "",
                    "url": "",
                    "width": "",
                    "height": "",
                    "format": "png",
                    "sha1": hashlib.sha1(image.read_bytes()).hexdigest(),
                    "phash": "",
                    "dup_group": -1,
                    "split": "test",
                }
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)
    Path(f"{out}.json").write_text(json.dumps({"root": str(root.resolve()), "manifest": str(out)}, indent=2))
    return len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("../shared/data/JSRT"))
    p.add_argument("--out", type=Path, default=Path("runs/data/jsrt.csv"))
    a = p.parse_args()
    n = build(a.root, a.out)
    print(f"wrote {a.out} ({n} images)")


if __name__ == "__main__":
    main()
