"""Ray batch prediction (issue #16): ``predict --engine ray`` with 1 and 2 workers against the local engine.

    .venv/bin/python benchmarks/bench_ray.py [--images 10000] [--repeats 1] [--root ../shared/data]

A folder of ``--images`` real images (the manifest's images, repeated through symlinks; nothing is copied), the
shipped default model, ONNX Runtime, every command a fresh process as a user would run it:

- local:        ``covidxray predict --backend onnx --images DIR --out local.csv``
- ray, N warm:  ``covidxray predict --engine ray --address auto --workers N ...`` against a Ray instance already
  running (``ray start --head --num-cpus 2``, started and stopped by this script): the cluster case; N = 1 (the
  cluster's 2 CPUs for the one actor, 2 ONNX Runtime threads: the local engine's resources) and N = 2 (1 CPU and
  1 thread each), and 1 actor of 1 CPU (``--cpus-per-worker 1``: the per-core unit the projection uses)
- ray, 1 cold:  ``covidxray predict --engine ray --workers 1 ...`` starting its own local Ray (one-off use)

Every output must equal the local engine's file row for row (probabilities to 1e-5). The engine's ``timing:``
line gives where the time went (Ray connect, first rows, steady images/s, merge); the steady rate per worker
feeds a projection for 1 M images on N nodes. Prints a table; writes benchmarks/results/bench_ray.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results" / "bench_ray.json"
MANIFEST = REPO / "runs" / "data" / "manifest.csv"
TIMING = re.compile(
    r"timing: (?P<total>[\d.]+) s in all: Ray connect (?P<connect>[\d.]+) s, first rows after (?P<first>[\d.]+) s, "
    r"then (?P<rate>[\d.]+) images/s for (?P<stream>[\d.]+) s, merge/summary (?P<merge>[\d.]+) s"
)
PROBE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(r.stderr)"
)


def source_images(root: Path) -> list[str]:
    if MANIFEST.exists():
        with MANIFEST.open(newline="") as f:
            rows = list(csv.DictReader(f))
        side = (
            json.loads(MANIFEST.with_suffix(".csv.json").read_text())
            if MANIFEST.with_suffix(".csv.json").exists()
            else {}
        )
        base = Path(side.get("root") or root)
        return [str(base / r["path"]) for r in rows]
    return [str(p) for p in sorted(root.rglob("*")) if p.suffix.lower() in (".png", ".jpeg", ".jpg")]


def make_folder(sources: list[str], folder: Path, n: int) -> dict:
    folder.mkdir(parents=True)
    sizes = []
    for i in range(n):
        src = sources[i % len(sources)]
        os.symlink(src, folder / f"{i:05d}{Path(src).suffix}")
        if i < len(sources):
            sizes.append(os.path.getsize(src))
    return {
        "images": n,
        "distinct_files": min(n, len(sources)),
        "mean_file_kb": sum(sizes) / len(sizes) / 1e3,
    }


def run(cmd: list[str], out: Path) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PROBE, *cmd], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    rc, kib = (int(v) for v in res.stdout.split()[-2:])
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    entry = {"seconds": elapsed, "driver_peak_rss_mb": kib / 1024, "exit_code": rc, "command": " ".join(cmd)}
    m = TIMING.search(res.stderr)
    if m:
        entry["timing"] = {k: float(v) for k, v in m.groupdict().items()}
    entry["rows"] = sum(1 for _ in out.open()) - 1
    return entry


def same_rows(a: Path, b: Path, tol: float = 1e-5) -> bool:
    with a.open(newline="") as fa, b.open(newline="") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    if len(ra) != len(rb):
        return False
    for x, y in zip(ra, rb, strict=True):
        if x.keys() != y.keys():
            return False
        for k in x:
            if k.startswith("p_") and x[k] and y[k]:
                if abs(float(x[k]) - float(y[k])) > tol:
                    return False
            elif x[k] != y[k]:
                return False
    return True


def projection(
    per_worker: float, two_worker_efficiency: float, startup_s: float, mean_kb: float
) -> list[dict]:
    """1 M images on N nodes of 8 cores (7 actors each: one core left to Ray and the driver)."""
    rows = []
    for nodes in (1, 4, 16, 64):
        actors = nodes * 7
        rate = actors * per_worker * min(1.0, two_worker_efficiency)
        rows.append(
            {
                "nodes": nodes,
                "actors": actors,
                "images_per_s": rate,
                "hours_for_1M": (startup_s + 1e6 / rate) / 3600,
                "read_MB_per_s_needed": rate * mean_kb / 1e3,
            }
        )
    return rows


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores_available": len(os.sched_getaffinity(0)),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each configuration (the fastest is kept)")
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()

    import onnxruntime
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    load_before = os.getloadavg()
    result: dict = {
        "machine": machine(),
        "versions": {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__},
        "model": "shipped default model (ONNX)",
    }
    try:
        folder = work / "images"
        result["data"] = make_folder(source_images(args.root), folder, args.images)
        common = [
            str(BIN / "covidxray"),
            "predict",
            "--backend",
            "onnx",
            "--images",
            str(folder),
            "--no-progress",
        ]
        started = subprocess.run(
            [str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
             "--disable-usage-stats"],
            capture_output=True, text=True,
        )  # fmt: skip
        if started.returncode != 0:
            raise SystemExit(f"ray start failed:\n{started.stderr[-2000:]}")
        configs = {
            "local": (common, "local.csv"),
            "ray 1 worker (warm)": (
                [*common, "--engine", "ray", "--address", "auto", "--workers", "1"],
                "r1.csv",
            ),
            "ray 1 worker x 1 CPU (warm)": (
                [*common, "--engine", "ray", "--address", "auto", "--workers", "1", "--cpus-per-worker", "1"],
                "r1x1.csv",
            ),
            "ray 2 workers (warm)": (
                [*common, "--engine", "ray", "--address", "auto", "--workers", "2"],
                "r2.csv",
            ),
        }
        runs: dict[str, list[dict]] = {k: [] for k in configs}
        for _ in range(args.repeats):  # interleaved, so a change of machine load hits every configuration
            for name, (cmd, out) in configs.items():
                (work / out).unlink(missing_ok=True)
                runs[name].append(run([*cmd, "--out", str(work / out)], work / out))
                print(f"{name}: {runs[name][-1]['seconds']:.1f} s", flush=True)
        subprocess.run([str(BIN / "ray"), "stop"], capture_output=True, text=True)
        cold_out = work / "r1cold.csv"
        runs["ray 1 worker (cold: starts Ray)"] = [
            run([*common, "--engine", "ray", "--workers", "1", "--out", str(cold_out)], cold_out)
        ]
        configs["ray 1 worker (cold: starts Ray)"] = (None, "r1cold.csv")
        best = {k: min(v, key=lambda e: e["seconds"]) for k, v in runs.items()}
        local_s = best["local"]["seconds"]
        for name, entry in best.items():
            entry["images_per_s"] = args.images / entry["seconds"]
            entry["overhead_vs_local"] = entry["seconds"] / local_s - 1
            entry["same_rows_as_local"] = same_rows(work / "local.csv", work / configs[name][1])
        result["runs"] = best
        result["all_runs"] = runs
        w1 = best["ray 1 worker (warm)"].get("timing", {})
        w2 = best["ray 2 workers (warm)"].get("timing", {})
        w1x1 = best["ray 1 worker x 1 CPU (warm)"].get("timing", {})
        if w1 and w1x1 and w2:
            per_worker = w1x1["rate"]  # one 1-CPU actor: the unit a cluster adds per core
            eff = w2["rate"] / (2 * per_worker)
            startup = w1["connect"] + w1["first"]
            result["per_worker_images_per_s"] = per_worker
            result["two_worker_efficiency"] = eff
            result["driver_merge_rows_per_s"] = args.images / max(w1["merge"], 0.01)
            result["projection_1M"] = projection(per_worker, eff, startup, result["data"]["mean_file_kb"])
        result["overhead_1_worker_warm"] = best["ray 1 worker (warm)"]["overhead_vs_local"]
        # the median of the repeats too: the fastest run of each is the usual figure, the median shows the spread
        med = {k: statistics.median(e["seconds"] for e in v) for k, v in runs.items()}
        result["median_seconds"] = med
        result["overhead_1_worker_warm_median"] = med["ray 1 worker (warm)"] / med["local"] - 1

        def each_repeat(name: str) -> list[float]:  # overhead of each repeat against the local run beside it
            return [
                r["seconds"] / loc["seconds"] - 1 for r, loc in zip(runs[name], runs["local"], strict=True)
            ]

        result["overhead_1_worker_each_repeat"] = each_repeat("ray 1 worker (warm)")
        result["overhead_1_worker_1cpu_each_repeat"] = each_repeat("ray 1 worker x 1 CPU (warm)")
        result["target_overhead"] = 0.15
        result["load_average_before_after"] = [round(v, 2) for v in (*load_before, *os.getloadavg())]
    finally:
        subprocess.run([str(BIN / "ray"), "stop"], capture_output=True, text=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.images:,} images, {result['data']['mean_file_kb']:.0f} kB mean file, load "
          f"{result['load_average_before_after']}")  # fmt: skip
    print(f"{'engine':<34} {'seconds':>8} {'images/s':>9} {'vs local':>9} {'peak RSS':>9}  same rows  timing")
    for name, e in result["runs"].items():
        t = e.get("timing")
        tt = (
            f"connect {t['connect']:.1f} s, first rows {t['first']:.1f} s, steady {t['rate']:.0f}/s, merge {t['merge']:.2f} s"
            if t
            else ""
        )
        print(
            f"{name:<34} {e['seconds']:>8.1f} {e['images_per_s']:>9.0f} {e['overhead_vs_local']:>+9.1%} "
            f"{e['driver_peak_rss_mb']:>7.0f}MB  {e['same_rows_as_local']!s:<9}  {tt}"
        )
    if "projection_1M" in result:
        print(f"\nper worker (steady): {result['per_worker_images_per_s']:.0f} images/s; 2-worker efficiency "
              f"{result['two_worker_efficiency']:.2f}; driver merge {result['driver_merge_rows_per_s']:,.0f} rows/s")  # fmt: skip
        print(f"{'nodes (8 cores, 7 actors)':<28} {'images/s':>9} {'hours for 1 M':>14} {'read MB/s':>10}")
        for p in result["projection_1M"]:
            print(f"{p['nodes']:<28} {p['images_per_s']:>9.0f} {p['hours_for_1M']:>14.2f} {p['read_MB_per_s_needed']:>10.0f}")  # fmt: skip
    ok = result["overhead_1_worker_warm"] <= result["target_overhead"]
    print(f"\noverhead at 1 worker (warm): {result['overhead_1_worker_warm']:+.1%} fastest vs fastest, "
          f"{result['overhead_1_worker_warm_median']:+.1%} median vs median, per repeat "
          f"{', '.join(f'{v:+.1%}' for v in result['overhead_1_worker_each_repeat'])} (target <= 15%): "
          f"{'met' if ok else 'NOT met'}; an actor of 1 CPU per repeat "
          f"{', '.join(f'{v:+.1%}' for v in result['overhead_1_worker_1cpu_each_repeat'])}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
