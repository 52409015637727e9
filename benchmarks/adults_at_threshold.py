"""COVID sensitivity / specificity of a bundle at given p(covid) thresholds on the test split, over all sources and
on adults alone (:func:`covidxray.data.population.children` left out): how much the children flatter the
specificity. BENCHMARKS.md, "Adults in every report".

    .venv/bin/python benchmarks/adults_at_threshold.py runs/first_default --threshold 0.1046021580696106 0.221 \
        --out benchmarks/results/adults_at_threshold.json

(runs/first_default: the first default model, ``git show c486c58:src/covidxray/default_model/FILE`` for
config.json and model.safetensors.) Without ``--threshold`` the bundle's own operating points are used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from covidxray.bundle import load_bundle
from covidxray.data.manifest import read_manifest
from covidxray.data.population import children
from covidxray.evaluation.inference import run_inference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threshold", type=float, nargs="*", default=None)
    ap.add_argument("--manifest", default="runs/data/manifest.csv")
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    df = read_manifest(a.manifest)
    bundle = load_bundle(a.bundle)
    thresholds = a.threshold or [float(p["threshold"]) for p in bundle.config.operating_points.values()]
    test = np.flatnonzero(df["split"].astype(str).to_numpy() == "test")
    probs = run_inference(bundle, df, a.cache_dir, 64, test, 1).probabilities
    p = probs[:, list(bundle.config.classes).index("covid")]
    positive = df["label"].astype(str).to_numpy()[test] == "covid"
    groups = {"all sources": np.ones(len(test), dtype=bool), "adults only": ~children(df)[test]}
    rows = []
    print("| threshold | images | sensitivity | specificity |\n|---|---|---|---|")
    for t in thresholds:
        for name, keep in groups.items():
            called, pos = p[keep] >= t, positive[keep]
            row = {
                "threshold": t,
                "group": name,
                "n_images": int(keep.sum()),
                "n_positive": int(pos.sum()),
                "sensitivity": float(called[pos].mean()),
                "specificity": float((~called[~pos]).mean()),
            }
            rows.append(row)
            print(
                f"| {t:.4f} ({name}) | {row['n_images']} | {row['sensitivity']:.3f} | {row['specificity']:.3f} |"
            )
    if a.out:
        old = json.loads(a.out.read_text()) if a.out.is_file() else {}
        old[str(a.bundle)] = rows
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(old, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
