"""The balanced operating point of a recipe's leave-one-source-out folds, two ways (issue #12, item 7).

``covidxray run`` chooses the deciding (balanced) point on its fold models and carries it to the default model as
an in-source COVID sensitivity. This script re-does that choice on any pair of fold runs, both ways:

- ``pooled probability`` (before 2026-12-03): one threshold with the highest min(sensitivity, specificity) on the
  folds' pooled held-out predictions, carried as the sensitivity it gives on their pooled in-source validation rows;
- ``fold level`` (``covidxray.pipeline.fold_balanced_point``, since): the in-source sensitivity level whose
  per-fold thresholds give the highest min(mean sensitivity, mean specificity) over the held-out sources.

For each it prints what every fold model does at its threshold on its held-out source and on JSRT (adults from a
hospital no training image comes from, no COVID-19).

    .venv/bin/python benchmarks/balanced_level.py FOLD_RUN [FOLD_RUN ...] [--epoch N] [--out J]

FOLD_RUN: a run of ``covidxray train --holdout-source S --epoch-weights`` (``runs/loso/cohen``, ...). The epoch is
the one ``covidxray run`` would keep (:func:`covidxray.pipeline.choose_epoch` on the runs' held-out curves) unless
``--epoch`` is given; each run is copied to a temporary folder and rebuilt there at that epoch. ``--as-is`` keeps
each run's ``model/`` instead (a weight average from ``benchmarks/weight_averaging.py --nested-out``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray.bundle import load_bundle
from covidxray.data.manifest import read_manifest
from covidxray.evaluation.inference import run_inference
from covidxray.evaluation.operating_point import choose_operating_points, rates_at, threshold_for_sensitivity
from covidxray.pipeline import choose_epoch, fold_balanced_point
from covidxray.training.history import read_history
from covidxray.training.trainer import reselect_epoch

COVID = "covid"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--epoch", type=int, default=0)
    ap.add_argument(
        "--as-is",
        action="store_true",
        help="use each run's model/ as it is (e.g. a weight average written by weight_averaging.py --nested-out)",
    )
    ap.add_argument("--manifest", type=Path, default=Path("runs/data/manifest.csv"))
    ap.add_argument("--jsrt", type=Path, default=Path("runs/data/jsrt.csv"))
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/balanced_level.json"))
    a = ap.parse_args()
    df, jsrt = read_manifest(a.manifest), read_manifest(a.jsrt)
    src, split = df["source"].astype(str).to_numpy(), df["split"].astype(str).to_numpy()
    folds = {}
    for run in a.runs:
        cfg = json.loads((run / "run.json").read_text())["config"]
        folds[cfg["holdout_source"]] = run
    curves = {f: [h.get("holdout_auc_covid") for h in read_history(r)] for f, r in folds.items()}
    epoch = "as is" if a.as_is else a.epoch or choose_epoch(curves)["epoch"]
    held, val, p_jsrt = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for fold, run in folds.items():
            copy = Path(tmp) / fold
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
            if not a.as_is:
                reselect_epoch(copy, epoch, f"balanced_level.py: epoch {epoch}")
            bundle = load_bundle(copy / "model")
            for rows, parts in (
                (np.flatnonzero(src == fold), held),
                (np.flatnonzero((src != fold) & (split == "val")), val),
            ):
                part = df.iloc[rows][["source", "label", "patient_id"]].copy()
                part["p"] = run_inference(bundle, df, a.cache_dir, 64, rows).probability(COVID)
                part["fold"] = fold
                parts.append(part)
            p_jsrt[fold] = run_inference(bundle, jsrt, a.cache_dir, 64, None).probability(COVID)
    pool, ins = pd.concat(held, ignore_index=True), pd.concat(val, ignore_index=True)
    y_pool, y_ins = (pool["label"] == COVID).to_numpy(), (ins["label"] == COVID).to_numpy()

    pooled_t = choose_operating_points(y_pool, pool["p"].to_numpy())["balanced"]["threshold"]
    pooled_level = rates_at(y_ins, ins["p"].to_numpy(), pooled_t)["sensitivity"]
    level = fold_balanced_point(pool, ins)["in_source_sensitivity"]
    rules = {
        "pooled probability": {"level": pooled_level, "thresholds": dict.fromkeys(folds, pooled_t)},
        "fold level": {"level": level, "thresholds": {}},
    }
    for fold in folds:
        v = ins[ins["fold"] == fold]
        rules["fold level"]["thresholds"][fold] = threshold_for_sensitivity(
            (v["label"] == COVID).to_numpy(), v["p"].to_numpy(), level
        )
    print(f"epoch {epoch}; folds {', '.join(f'{f}: {r}' for f, r in folds.items())}\n")
    print(
        "| rule | in-source sensitivity level | held-out source | threshold | sensitivity | specificity | JSRT called COVID |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rules.items():
        r["folds"] = {}
        for fold, t in r["thresholds"].items():
            h = pool[pool["fold"] == fold]
            rates = rates_at((h["label"] == COVID).to_numpy(), h["p"].to_numpy(), t)
            r["folds"][fold] = {
                "threshold": t,
                **rates,
                "jsrt_covid_share": float(np.mean(p_jsrt[fold] >= t)),
            }
            f = r["folds"][fold]
            print(
                f"| {name} | {r['level']:.2f} | {fold} | {t:.3f} | {f['sensitivity']:.2f} | {f['specificity']:.2f} | "
                f"{f['jsrt_covid_share']:.0%} |"
            )
    result = {"epoch": epoch, "runs": {f: str(r) for f, r in folds.items()}, "rules": rules}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(a.out.read_text()) if a.out.is_file() else {}
    old[" ".join(str(r) for r in a.runs)] = result
    a.out.write_text(json.dumps(old, indent=1))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
