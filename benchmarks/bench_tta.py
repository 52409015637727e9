"""Test-time augmentation and small ensembles (issue #12, item 5): what they cost and what they change.

    .venv/bin/python benchmarks/bench_tta.py [--model BUNDLE] [--second BUNDLE] [--threads 1]

1. Cost: images/s of the whole predictor (decode, preprocess, views, network, guard) over ``--images`` real
   val/test images in batches of 32, and the latency of one ``predict`` call, for no TTA, TTA with 2, 4 and 8 views,
   and an ensemble of two models, on the torch and the ONNX backend. Rates are per wall second and per second of
   CPU time (what ``--threads`` dedicated cores would give; the machine is shared, so the wall figure is noisy).
2. Effect: ``covidxray.evaluation.evaluate`` on the manifest's test split (operating point chosen on val, not
   stored) for the same variants: COVID ROC AUC over all sources and within each source that has COVID images,
   with 95 % patient-bootstrap intervals, and sensitivity / specificity at the operating point chosen on val.

``--model`` defaults to the shipped default model; ``--second`` is the ensemble's second member (default: the
model itself, which measures the cost only: an ensemble of a model with itself predicts what the model does).
Writes benchmarks/results/bench_tta.json (``--skip-cost`` / ``--skip-effect`` keep the other section of an
existing file) and prints two tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_tta.json"
MANIFEST = REPO / "runs" / "data" / "manifest.csv"
TTA_COUNTS = (1, 2, 4, 8)


def variants(second: bool) -> list[tuple[str, int, bool]]:
    """(name, TTA views, ensemble?) of every measured variant."""
    out = [("none" if n == 1 else f"tta{n}", n, False) for n in TTA_COUNTS]
    out.append(("ensemble2", 1, True))
    if second:
        out.append(("ensemble2+tta4", 4, True))
    return out


def prepare(bundle: Path, work: Path, name: str) -> Path:
    """A copy of ``bundle`` with model.onnx (exported here when missing)."""
    from covidxray.prediction.export import export_onnx

    dst = work / name
    shutil.copytree(bundle, dst)
    if not (dst / "model.onnx").exists():
        export_onnx(dst, dst / "model.onnx")
    return dst


def predictor(bundles: list[Path], backend: str, tta: int, threads: int):
    """A predictor whose ONNX sessions use ``threads`` threads (``load_model`` uses the default of 2)."""
    from covidxray.prediction.predictor import Predictor

    if backend == "onnx":
        from covidxray.prediction.onnx_backend import OnnxBackend

        return Predictor([OnnxBackend(b / "model.onnx", threads=threads) for b in bundles], tta=tta)
    from covidxray.prediction.torch_backend import TorchBackend

    return Predictor([TorchBackend(b) for b in bundles], tta=tta)


def sample_paths(n: int) -> list[str]:
    from covidxray.data.manifest import read_manifest

    df = read_manifest(MANIFEST)
    rows = df[df["split"].isin(["val", "test"])]
    root = Path(df.attrs["root"])
    pick = np.random.default_rng(0).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [str(root / rows["path"].iloc[i]) for i in sorted(pick)]


def bench_cost(bundles: list[Path], paths: list[str], threads: int, latency_runs: int) -> list[dict]:
    rows = []
    for backend in ("torch", "onnx"):
        for name, tta, ensemble in variants(second=False):
            members = bundles if ensemble else bundles[:1]
            pred = predictor(members, backend, tta, threads)
            pred.predict_batch(paths[:32])  # warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            out = pred.predict_batch(paths, batch_size=32)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert all(p.ok for p in out)
            lat = []
            for p in paths[:latency_runs]:
                t = time.perf_counter()
                pred.predict(p)
                lat.append(time.perf_counter() - t)
            rows.append({
                "backend": backend, "variant": name, "tta_views": tta, "models": len(members),
                "images": len(out), "images_per_s": len(out) / wall, "images_per_cpu_s": len(out) / cpu,
                "latency_ms_median": 1000 * statistics.median(lat),
            })  # fmt: skip
            r = rows[-1]
            print(
                f"  {backend:<6} {name:<10} {r['images_per_s']:8.1f} img/s  {r['images_per_cpu_s']:8.1f} img/CPU-s  "
                f"latency {r['latency_ms_median']:7.1f} ms",
                flush=True,
            )
    for r in rows:
        base = next(b for b in rows if b["backend"] == r["backend"] and b["variant"] == "none")
        r["cpu_cost_vs_none"] = base["images_per_cpu_s"] / r["images_per_cpu_s"]
    return rows


def covid_figures(metrics: dict) -> dict:
    """COVID AUC overall and per source (where the source has COVID and other images), the operating point."""

    def auc(group: dict):
        m = group["per_class"].get("covid", {}).get("roc_auc", {})
        return {"value": m.get("value"), "ci": m.get("ci")}

    out = {"covid_auc": auc(metrics["overall"]), "macro_auc": metrics["overall"]["macro"]["roc_auc"]["value"]}
    out["covid_auc_within"] = {
        s: auc(g) for s, g in metrics["per_source"].items() if auc(g)["value"] is not None
    }
    op = metrics.get("operating_point", {})
    if "threshold" in op:
        out["operating_point"] = {
            "threshold": op["threshold"],
            "sensitivity": op["test"]["sensitivity"]["value"],
            "specificity": op["test"]["specificity"]["value"],
        }
    return out


def bench_effect(
    bundles: list[Path],
    second: bool,
    cache_dir: Path,
    work: Path,
    n_resamples: int,
    only: set[str] | None,
    save=None,
) -> list[dict]:
    from covidxray.data.manifest import read_manifest
    from covidxray.evaluation.evaluate import evaluate
    from covidxray.evaluation.metrics_json import EvaluationOptions

    df = read_manifest(MANIFEST)
    rows = []
    runs = [(n, t, e) for n, t, e in variants(second) if second or not e]
    if second:
        runs.insert(len(TTA_COUNTS), ("second", 1, False))
    for name, tta, ensemble in runs:
        if only and name not in only:
            continue
        members = bundles if ensemble else ([bundles[1]] if name == "second" else bundles[:1])
        o = EvaluationOptions(tta=tta, probe=False, n_resamples=n_resamples, store_operating_point=False)
        t0 = time.perf_counter()
        metrics = evaluate(
            members if len(members) > 1 else members[0], df, work / f"eval_{name}", cache_dir, o
        )
        rows.append({"variant": name, "tta_views": tta, "models": len(members), **covid_figures(metrics)})
        rows[-1]["seconds"] = time.perf_counter() - t0
        if save is not None:
            save(rows[-1])
        r = rows[-1]
        within = ", ".join(f"{s} {v['value']:.4f}" for s, v in r["covid_auc_within"].items())
        opt = r.get("operating_point", {})
        print(
            f"  {name:<15} COVID AUC {r['covid_auc']['value']:.4f}  within: {within}  "
            f"sens/spec at val point {opt.get('sensitivity', float('nan')):.3f}/{opt.get('specificity', float('nan')):.3f}",
            flush=True,
        )
    return rows


def machine(threads: int) -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores_available": len(os.sched_getaffinity(0)),
        "threads_used": threads,
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def update_results(change) -> None:
    """Read the results file, apply ``change`` to it, write it back (under a lock: runs may overlap)."""
    import fcntl

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "bench_tta.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        change(result)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="bundle (default: the shipped default model)")
    ap.add_argument(
        "--second", type=Path, default=None, help="the ensemble's second bundle (default: --model)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default: 1)")
    ap.add_argument("--images", type=int, default=256, help="real images for the cost runs (default: 256)")
    ap.add_argument("--latency-runs", type=int, default=20, help="single-image predict calls timed")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "cache")
    ap.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-effect", action="store_true")
    ap.add_argument(
        "--variants",
        default=None,
        help="comma-separated effect variants to measure (none, tta2, tta4, tta8, second, ensemble2, "
        "ensemble2+tta4); their rows replace those of an existing results file",
    )
    args = ap.parse_args()

    import onnxruntime
    import torch

    from covidxray.bundle import DEFAULT_MODEL_DIR, resolve_model_path

    torch.set_num_threads(args.threads)
    first = resolve_model_path(args.model or DEFAULT_MODEL_DIR, "torch")
    second = resolve_model_path(args.second, "torch") if args.second else None
    work = Path(tempfile.mkdtemp(prefix="bench_tta_"))
    try:
        bundles = [prepare(first, work, "first"), prepare(second or first, work, "second")]
        # each section keeps its own command and machine, so the cost and the effect can be measured apart;
        # effect rows are saved one by one and merged by variant (two effect runs may write side by side)
        about = {
            "command": "benchmarks/bench_tta.py " + " ".join(sys.argv[1:]),
            "models": {"first": str(first), "second": str(second or first) + ("" if second else " (itself)")},
            "machine": machine(args.threads),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        }
        if not args.skip_cost:
            print(f"cost: {args.images} val/test images, batches of 32, {args.threads} thread(s)", flush=True)
            rows = bench_cost(bundles, sample_paths(args.images), args.threads, args.latency_runs)
            section = {**about, "machine": {**about["machine"], "load_average_after": load()}, "rows": rows}
            update_results(lambda r: r.update(cost=section))
        if not args.skip_effect:
            print("effect: test split, operating point chosen on val", flush=True)
            only = set(args.variants.split(",")) if args.variants else None  # rows of other variants stay

            def save(row: dict) -> None:
                def merge(r: dict) -> None:
                    old = r.get("effect", {})
                    rows = [x for x in old.get("rows", []) if x["variant"] != row["variant"]] + [row]
                    row["command"], row["models"] = about["command"], about["models"]
                    row["machine"] = {**about["machine"], "load_average_after": load()}
                    r["effect"] = {"versions": about["versions"], "rows": rows}

                update_results(merge)

            bench_effect(bundles, second is not None, args.cache_dir, work, args.bootstrap, only, save)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
