"""How should an operating point travel from one model to another? (issue #12, item 7)

The shipped model decides with a threshold chosen on the *fold* models' pooled out-of-source predictions and
applied, as a probability, to the *all-sources* model -- a different network, trained on more collections, whose
probabilities need not sit where the fold models' do. This compares two ways of carrying a point from one model to
another, on the only pairs where the answer can be checked: the two leave-one-source-out folds of each ablation
row. For fold A, the point is chosen on fold B's out-of-source predictions (highest min(sensitivity,
specificity), as ``benchmarks/generalization.py`` does) and carried to A:

- ``probability``: A uses B's threshold as it is (what the shipped model does);
- ``in-source sensitivity``: B's threshold gives some sensitivity on B's own in-source validation rows; A uses the
  highest threshold that gives at least that sensitivity on *its* in-source validation rows (the point travels
  as a rank, on images each model has seen the like of) -- what ``covidxray run`` now does;
- ``in-source specificity``: the same, matching (as closely as it can) the specificity on the in-source
  validation rows;
- ``balanced level``: the in-source sensitivity *level* chosen on B directly -- the level whose threshold on B's
  in-source validation rows gives the highest min(sensitivity, specificity) on B's held-out source
  (``covidxray.pipeline.fold_balanced_point`` on one fold) -- and A at its own threshold for that level: what
  ``covidxray run`` does since 2026-12-03 (the point is chosen in the unit it is carried in).

Each is scored by sensitivity / specificity on A's held-out source (never used to choose), and by the share of
JSRT (adults, no COVID-19) A calls COVID-19.

    .venv/bin/python benchmarks/point_transfer.py ROW [ROW...] [--out benchmarks/results/point_transfer.json]

ROW is a folder ``runs/gen/ROW`` with fold runs ``cohen/`` and ``radiography/`` (as for generalization.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from covidxray.data.manifest import read_manifest
from covidxray.evaluation.operating_point import rates_at, threshold_for_sensitivity
from covidxray.pipeline import fold_balanced_point

FOLDS = ("cohen", "radiography")


def threshold_matching(y: np.ndarray, p: np.ndarray, target: float, what: str) -> float:
    """The threshold at which ``what`` ("sensitivity" or "specificity") on (y, p) is closest to ``target``
    (ties: the higher threshold)."""
    cands = np.unique(np.concatenate([p, [1.0 + 1e-9]]))
    best, best_gap = float(cands[-1]), np.inf
    for t in cands[::-1]:
        r = rates_at(y, p, float(t))
        gap = abs(r[what] - target)
        if gap < best_gap - 1e-12:
            best, best_gap = float(t), gap
    return best


def main() -> None:
    import importlib.util

    # the fold models' predictions exactly as the ablation table makes them
    spec = importlib.util.spec_from_file_location("gen", Path(__file__).with_name("generalization.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--manifest", type=Path, default=Path("runs/data/manifest.csv"))
    ap.add_argument("--jsrt", type=Path, default=Path("runs/data/jsrt.csv"))
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--gen-dir", type=Path, default=Path("runs/gen"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/point_transfer.json"))
    a = ap.parse_args()
    df, jsrt = read_manifest(a.manifest), read_manifest(a.jsrt)
    src = df["source"].astype(str).to_numpy()
    split = df["split"].astype(str).to_numpy()
    y_all = (df["label"].astype(str) == "covid").to_numpy()
    results = {}
    for row in a.rows:
        pred = {}
        for fold in FOLDS:
            need = (src == fold) | ((src != fold) & (split == "val"))
            rows = np.flatnonzero(need)
            (p_rows, _), (p_jsrt, _) = gen.predict(
                a.gen_dir / row / fold, [(df, rows), (jsrt, None)], a.cache_dir
            )
            p = np.full(len(df), np.nan)
            p[rows] = p_rows
            pred[fold] = (p, p_jsrt)
        out = {}
        for fold in FOLDS:
            other = [f for f in FOLDS if f != fold][0]
            p_a, jsrt_a = pred[fold]
            p_b, _ = pred[other]
            held_a, held_b = src == fold, src == other
            val_a, val_b = (~held_a) & (split == "val"), (~held_b) & (split == "val")
            t_b = gen.balanced_threshold(y_all[held_b], p_b[held_b])
            in_b = rates_at(y_all[val_b], p_b[val_b], t_b)
            if not in_b["sensitivity"] or in_b["specificity"] is None:
                print(f"{row}/{fold}: no in-source COVID-19 reached at {t_b:.3f}: skipped")
                continue
            level = fold_balanced_point(
                pd.DataFrame(
                    {"label": np.where(y_all[held_b], "covid", "-"), "p": p_b[held_b], "fold": other}
                ),
                pd.DataFrame({"label": np.where(y_all[val_b], "covid", "-"), "p": p_b[val_b], "fold": other}),
            )["in_source_sensitivity"]
            thresholds = {
                "probability": t_b,
                # what `covidxray run` does (covidxray.pipeline.carry_balanced_point)
                "in-source sensitivity": threshold_for_sensitivity(
                    y_all[val_a], p_a[val_a], in_b["sensitivity"]
                ),
                "in-source specificity": threshold_matching(
                    y_all[val_a], p_a[val_a], in_b["specificity"], "specificity"
                ),
                "balanced level": threshold_for_sensitivity(y_all[val_a], p_a[val_a], level),
            }
            out[fold] = {
                "point_from": other,
                "other_fold_in_source": {"threshold": t_b, **in_b, "balanced_level": level},
                "rules": {
                    k: {
                        "threshold": t,
                        **rates_at(y_all[held_a], p_a[held_a], t),
                        "jsrt_covid_share": float(np.mean(jsrt_a >= t)),
                    }
                    for k, t in thresholds.items()
                },
            }
        results[row] = out
    print(
        "| row | held-out source | rule | threshold | sensitivity | specificity | min | JSRT called COVID |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row, out in results.items():
        for fold, f in out.items():
            for k, r in f["rules"].items():
                m = min(r["sensitivity"], r["specificity"])
                print(
                    f"| {row} | {fold} | {k} | {r['threshold']:.3f} | {r['sensitivity']:.2f} | "
                    f"{r['specificity']:.2f} | {m:.2f} | {r['jsrt_covid_share']:.0%} |"
                )
    summary = {}
    for k in ("probability", "in-source sensitivity", "in-source specificity", "balanced level"):
        mins = [
            min(f["rules"][k]["sensitivity"], f["rules"][k]["specificity"])
            for out in results.values()
            for f in out.values()
        ]
        summary[k] = {"mean_min_sens_spec": float(np.mean(mins)), "n": len(mins)}
        print(
            f"\n{k}: mean min(sensitivity, specificity) on the held-out source {np.mean(mins):.3f} (n={len(mins)})"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"rows": results, "summary": summary}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
