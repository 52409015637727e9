"""Weight averaging out of source (issue #12): leave-one-source-out fold runs (trained with ``--holdout-source S
--epoch-weights``, or ``--average-from``) rebuilt as the average of the weights of epochs FIRST to their last
(:func:`covidxray.training.trainer.average_epoch_weights`, what ``--average-from FIRST`` keeps), and each
fold's held-out COVID AUC for that average beside the single epochs'.

    .venv/bin/python benchmarks/weight_averaging.py RUN_DIR_COHEN RUN_DIR_RADIOGRAPHY --first 11 \
        [--nested-out DIR] [--sweep 1,6,11,14,16] [--out runs/exp/weight_averaging.json]

``--nested-out DIR`` writes ``DIR/<fold>/``: a copy of each fold run whose ``model/`` holds the average, for
``benchmarks/generalization.py`` (intervals, travelling points, JSRT). ``--sweep`` also scores the averages
starting at other epochs, and every single epoch (one pass over the held-out source each: minutes for the
Radiography Database); the window to ship is ``--first``, fixed beforehand, not the sweep's best.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from covidxray.bundle import load_bundle, save_bundle
from covidxray.data.manifest import read_manifest
from covidxray.evaluation.inference import run_inference
from covidxray.metrics import roc_auc
from covidxray.training.trainer import average_epoch_weights, epoch_weights_path


def held_out_auc(bundle, df, rows, cache_dir: str) -> float | None:
    p = run_inference(bundle, df, cache_dir, 64, rows).probability("covid")
    y = df["label"].astype(str).to_numpy()[rows] == "covid"
    return roc_auc(y, p, "covid")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "runs", nargs="+", type=Path, help="fold run folders (each trained with --holdout-source)"
    )
    ap.add_argument("--first", type=int, required=True, help="average the epochs from this one to the last")
    ap.add_argument(
        "--sweep", default="", help="comma-separated other first epochs to score, plus single epochs"
    )
    ap.add_argument("--nested-out", type=Path)
    ap.add_argument("--manifest", type=Path, default=Path("runs/data/manifest.csv"))
    ap.add_argument("--cache-dir", default="runs/cache")
    ap.add_argument("--out", type=Path, default=Path("runs/exp/weight_averaging.json"))
    a = ap.parse_args()
    df = read_manifest(a.manifest)
    src = df["source"].astype(str).to_numpy()
    result = {}
    for run in a.runs:
        bundle = load_bundle(run / "model")
        fold = bundle.config.data.get("holdout_source") or run.name
        rows = np.flatnonzero(src == fold)
        last = max(int(p.stem.split("-")[1]) for p in (run / "epochs").glob("epoch-*.safetensors"))
        base = bundle.model
        firsts = sorted({a.first, *(int(v) for v in a.sweep.split(",") if v)})
        fig: dict = {"fold": fold, "last": last, "averaged": {}, "single": {}}
        for first in firsts:
            bundle.model = average_epoch_weights(base, run, first, last)
            fig["averaged"][f"{first}-{last}"] = held_out_auc(bundle, df, rows, a.cache_dir)
            if first == a.first and a.nested_out:
                dst = a.nested_out / run.name
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(run, dst, ignore=shutil.ignore_patterns("epochs", "checkpoints"))
                config = bundle.config
                config.training = {
                    **config.training,
                    "best_epoch": last,
                    "averaged_epochs": [first, last],
                    "selected_by": f"average of epochs {first}-{last} (benchmarks/weight_averaging.py)",
                }
                config.metrics = {**config.metrics, "val": {}}
                shutil.rmtree(dst / "model")
                save_bundle(dst / "model", bundle.model, config)
        if a.sweep:
            from safetensors.torch import load_file

            for e in range(1, last + 1):
                base.load_state_dict(load_file(str(epoch_weights_path(run, e))))
                bundle.model = base.eval()
                fig["single"][e] = held_out_auc(bundle, df, rows, a.cache_dir)
        result[str(run)] = fig
        avg = ", ".join(f"{k}: {v:.4f}" for k, v in fig["averaged"].items())
        print(f"{run} ({fold} held out): averaged {avg}", flush=True)
        if fig["single"]:
            print("  single epochs: " + " ".join(f"{v:.3f}" for v in fig["single"].values()), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(a.out.read_text()) if a.out.is_file() else {}
    old.update(result)
    a.out.write_text(json.dumps(old, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
