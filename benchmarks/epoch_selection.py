"""Choosing the epoch out of source (issue #12, item 6): the held-out COVID AUC curves of leave-one-source-out
fold runs (trained with ``--holdout-source S --epoch-weights``), the epoch each selection rule keeps, and
the out-of-source AUC that epoch gets.

Rules compared, per fold:

- ``validation``: the run's own choice, the best in-source validation macro AUC (what runs did before);
- ``other fold``: the epoch with the highest smoothed held-out AUC of the *other* fold's curve -- chosen without
  the images it is scored on, so its AUC is an honest estimate of what the rule does at a new hospital;
- ``both folds``: the rule of ``covidxray run`` (:func:`covidxray.pipeline.choose_epoch`, mean of both folds'
  smoothed curves), whose AUC on these same folds is optimistic (it was chosen on them);
- ``last``: the last epoch run.

    .venv/bin/python benchmarks/epoch_selection.py RUN_DIR_COHEN RUN_DIR_RADIOGRAPHY [--nested-out DIR]
        [--out benchmarks/results/epoch_selection.json]

``--nested-out DIR`` writes ``DIR/<fold>/``: a copy of each fold run with ``model/`` rebuilt at the epoch the
other fold chose, for ``benchmarks/generalization.py`` (intervals, travelling points, JSRT).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from covidxray.pipeline import choose_epoch
from covidxray.training.history import read_history
from covidxray.training.trainer import reselect_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "runs", nargs="+", type=Path, help="fold run folders (each trained with --holdout-source)"
    )
    ap.add_argument("--nested-out", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/epoch_selection.json"))
    args = ap.parse_args()
    folds = {}
    for run in args.runs:
        info = json.loads((run / "run.json").read_text())
        folds[info["config"]["holdout_source"]] = (run, info, read_history(run))
    curves = {f: [h["holdout_auc_covid"] for h in hist] for f, (_, _, hist) in folds.items()}
    both = choose_epoch(curves)
    result = {"both_folds": both, "folds": {}}
    print(f"epoch chosen on both folds: {both['epoch']} ({both['rule']})\n")
    print("| held-out source | rule | epoch | out-of-source COVID AUC |")
    print("|---|---|---|---|")
    for f, (run, info, hist) in folds.items():
        # only epochs this fold reached (a run its patience stopped early has no later weights)
        others = {g: c[: len(hist)] for g, c in curves.items() if g != f}
        nested = choose_epoch(others)["epoch"] if others else 0
        rules = {
            "validation": int(info["best_epoch"]),
            "other fold": nested,
            "both folds": both["epoch"],
            "last": len(hist),
        }
        auc = {k: (hist[e - 1]["holdout_auc_covid"] if e else None) for k, e in rules.items()}
        result["folds"][f] = {"epochs": rules, "auc": auc, "curve": curves[f]}
        for k, e in rules.items():
            print(f"| {f} | {k} | {e} | {auc[k]:.3f} |")
        if args.nested_out and nested:
            dst = args.nested_out / f
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints"))
            reselect_epoch(dst, nested, f"select_epoch {nested}: chosen on the other fold's held-out curve")
    print("\nper epoch (held-out COVID AUC):")
    names = list(curves)
    print("| epoch | " + " | ".join(names) + " | val macro AUC (" + ", ".join(names) + ") |")
    print("|---|" + "---|" * (len(names) + 1))
    n = max(len(c) for c in curves.values())
    for i in range(n):
        cells = [f"{curves[g][i]:.3f}" if i < len(curves[g]) else "" for g in names]
        vals = [f"{folds[g][2][i]['val_auc_macro']:.3f}" if i < len(curves[g]) else "" for g in names]
        print(f"| {i + 1} | " + " | ".join(cells) + " | " + ", ".join(vals) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
