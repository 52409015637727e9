"""Seed ensembles out of source (issue #12): do K leave-one-source-out fold runs of one recipe that differ only
in their seed, probabilities averaged, score better on the held-out source than the runs alone?

    .venv/bin/python benchmarks/seed_ensemble.py RUN_DIR [RUN_DIR ...] --epochs 11-20 \
        [--out benchmarks/results/seed_ensemble.json]

Every RUN_DIR is a fold run trained with ``--holdout-source S --epoch-weights``; runs are grouped by their held-out
source. For every epoch in ``--epochs`` each run's weights of that epoch predict the held-out source (cached
under ``runs/exp/seed_ensemble_cache``), and the table gives the held-out COVID AUC of every run alone, their
mean, and the AUC of the ensemble (the mean of the runs' p(covid) at that epoch). The summary line per fold is
the mean over the epochs in the window, so no single epoch is picked after looking.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from covidxray.bundle import load_bundle
from covidxray.data.manifest import read_manifest
from covidxray.evaluation.inference import run_inference
from covidxray.metrics import roc_auc
from covidxray.training.trainer import epoch_weights_path


def held_out_probabilities(
    run: Path, epoch: int, df, rows, cache_dir: str, store: Path, bundles: dict[Path, Any]
) -> np.ndarray:
    """p(covid) of ``run``'s weights at ``epoch`` on ``rows`` (cached by the weights' sha1; ``bundles`` keeps each
    run's bundle loaded once, its weights swapped per epoch)."""
    from safetensors.torch import load_file

    path = epoch_weights_path(run, epoch)
    key = hashlib.sha1(path.read_bytes()).hexdigest()[:16]
    cached = store / f"{key}.npy"
    if cached.is_file():
        return np.load(cached)
    if run not in bundles:
        bundles[run] = load_bundle(run / "model")
    bundle = bundles[run]
    bundle.model.load_state_dict(load_file(str(path)))
    bundle.model.eval()
    p = run_inference(bundle, df, cache_dir, 64, rows).probability("covid").astype(np.float64)
    store.mkdir(parents=True, exist_ok=True)
    np.save(cached, p)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="fold run folders (trained with --epoch-weights)")
    ap.add_argument("--epochs", default="11-20", help="window FIRST-LAST of epochs to score")
    ap.add_argument("--manifest", type=Path, default=Path("runs/data/manifest.csv"))
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--store", type=Path, default=Path("runs/exp/seed_ensemble_cache"))
    ap.add_argument("--label", default="", help="name of this ensemble in the JSON")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/seed_ensemble.json"))
    a = ap.parse_args()
    first, last = (int(v) for v in a.epochs.split("-"))
    df = read_manifest(a.manifest)
    src = df["source"].astype(str).to_numpy()
    folds: dict[str, list[Path]] = {}
    for run in a.runs:
        fold = json.loads((run / "run.json").read_text())["config"].get("holdout_source")
        if not fold:
            raise SystemExit(f"{run}: not a leave-one-source-out run (no holdout_source in its run.json)")
        folds.setdefault(fold, []).append(run)
    bundles: dict[Path, Any] = {}
    result: dict = {"runs": [str(r) for r in a.runs], "epochs": [first, last], "folds": {}}
    print(
        "| held-out source | epoch | "
        + " | ".join(f"run {i + 1}" for i in range(max(map(len, folds.values()))))
        + " | mean of runs | ensemble |"
    )
    print("|---|---|" + "---|" * (max(map(len, folds.values())) + 2))
    for fold, runs in folds.items():
        rows = np.flatnonzero(src == fold)
        y = df["label"].astype(str).to_numpy()[rows] == "covid"
        per_epoch = {}
        for e in range(first, last + 1):
            ps = [held_out_probabilities(r, e, df, rows, a.cache_dir, a.store, bundles) for r in runs]
            single = [roc_auc(y, p, "covid")[0] for p in ps]
            ens = roc_auc(y, np.mean(ps, axis=0), "covid")[0]
            per_epoch[e] = {"single": single, "ensemble": ens}
            print(
                f"| {fold} | {e} | "
                + " | ".join(f"{s:.3f}" for s in single)
                + f" | {np.mean(single):.3f} | {ens:.3f} |",
                flush=True,
            )
        summary = {
            "mean_single": float(np.mean([np.mean(v["single"]) for v in per_epoch.values()])),
            "mean_ensemble": float(np.mean([v["ensemble"] for v in per_epoch.values()])),
        }
        result["folds"][fold] = {"runs": [str(r) for r in runs], "per_epoch": per_epoch, **summary}
        print(
            f"{fold} held out, epochs {first}-{last}: runs alone {summary['mean_single']:.4f}, "
            f"ensemble {summary['mean_ensemble']:.4f}",
            flush=True,
        )
    means = {
        k: float(np.mean([f[k] for f in result["folds"].values()])) for k in ("mean_single", "mean_ensemble")
    }
    result.update(means)
    print(f"mean over folds: runs alone {means['mean_single']:.4f}, ensemble {means['mean_ensemble']:.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(a.out.read_text()) if a.out.is_file() else {}
    old[a.label or " ".join(str(r) for r in a.runs)] = result
    a.out.write_text(json.dumps(old, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
