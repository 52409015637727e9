"""Test-time augmentation and small ensembles **out of source** (issue #12, item 5): does averaging views or
models help on a collection the models never saw?

Each member is a folder of leave-one-source-out fold runs (``<member>/cohen``, ``<member>/radiography``: that
source held out, e.g. made by ``benchmarks/generalization.sh`` or ``benchmarks/epoch_selection.py
--nested-out``). For every fold, every image of the held-out source is predicted by each member with 1 and with
``--views`` test-time views, and by the average of all members; COVID ROC AUC with 95 % patient-bootstrap
intervals. Cost per variant is in BENCHMARKS.md "Test-time augmentation and ensembles" (bench_tta.py).

    .venv/bin/python benchmarks/oos_tta.py MEMBER [MEMBER...] [--views 4] \
        [--out benchmarks/results/oos_tta.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalization import FOLDS, auc_ci  # noqa: E402

from covidxray.bundle import load_bundle  # noqa: E402
from covidxray.data.manifest import read_manifest  # noqa: E402
from covidxray.evaluation.inference import run_inference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("members", nargs="+", type=Path)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--manifest", default="runs/data/manifest.csv")
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/oos_tta.json"))
    args = ap.parse_args()
    df = read_manifest(args.manifest)
    results: dict[str, dict] = {}
    for fold in FOLDS:
        rows = np.flatnonzero((df["source"].astype(str) == fold).to_numpy())
        y = (df["label"].astype(str).to_numpy()[rows] == "covid").astype(int)
        patients = (fold + ":" + df["patient_id"].astype(str)).to_numpy()[rows]
        probs: dict[str, np.ndarray] = {}
        for m in args.members:
            bundle = load_bundle(m / fold / "model")
            for views in sorted({1, args.views}):
                t0 = time.perf_counter()
                res = run_inference(bundle, df, args.cache_dir, 64, rows, views=views)
                name = m.name + ("" if views == 1 else f" tta{views}")
                probs[name] = res.probability("covid")
                print(f"{fold}: {name} {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if len(args.members) > 1:
            for views in sorted({1, args.views}):
                suffix = "" if views == 1 else f" tta{views}"
                probs[f"ensemble of {len(args.members)}{suffix}"] = np.mean(
                    [probs[m.name + suffix] for m in args.members], axis=0
                )
        results[fold] = {name: auc_ci(y, p, patients) for name, p in probs.items()}
    names = list(results[FOLDS[0]])
    print("| variant | " + " | ".join(f"COVID AUC, {f} held out" for f in FOLDS) + " | mean |")
    print("|---|" + "---|" * (len(FOLDS) + 1))
    for name in names:
        vals = [results[f][name] for f in FOLDS]
        cells = [f"{v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for v in vals]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean([v['value'] for v in vals]):.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"members": [str(m) for m in args.members], "views": args.views, "auc": results}, indent=2)
        + "\n"
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
