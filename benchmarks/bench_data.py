"""Throughput of the data stage on the real collections: building the manifest and the preprocessed cache.

Builds the manifest into a temporary folder (every image opened: no reuse of fingerprints), then the 128-px
cache twice (cold build, then warm reopen). Prints a table and writes ``benchmarks/results/bench_data.json``.

    .venv/bin/python benchmarks/bench_data.py [--root ../shared/data] [--workers 2] [--image-size 128]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        print(f"data root {args.root} not found: nothing to measure", file=sys.stderr)
        return 0

    from covidxray.data.cache import load_cache
    from covidxray.data.manifest import build_manifest, read_manifest, read_sidecar
    from covidxray.preprocess import Preprocessing

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = build_manifest(
            args.root, Path(tmp) / "manifest.csv", workers=args.workers, reuse_fingerprints=False
        )
        build_s = time.perf_counter() - t0
        df = read_manifest(out)
        counts = read_sidecar(out)["counts"]
        n = len(df) + sum(counts["rejects"].values())
        rows.append(("manifest build (open + hash every image)", n, build_s))
        pre = Preprocessing(image_size=args.image_size)
        t0 = time.perf_counter()
        arr = load_cache(df, pre, Path(tmp) / "cache", workers=args.workers, progress=False)
        rows.append(
            (f"cache build {args.image_size}px (decode + preprocess)", len(df), time.perf_counter() - t0)
        )
        del arr
        t0 = time.perf_counter()
        arr = load_cache(df, pre, Path(tmp) / "cache", workers=args.workers, progress=False)
        _ = int(arr.sum(dtype="uint64"))  # touch every byte
        rows.append(
            (f"cache reopen {args.image_size}px (memmap, read all)", len(df), time.perf_counter() - t0)
        )
        del arr

    print(f"{'step':48s} {'images':>7s} {'seconds':>8s} {'images/s':>9s}")
    for name, count, seconds in rows:
        print(f"{name:48s} {count:7d} {seconds:8.1f} {count / seconds:9.0f}")
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_data.py " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "workers": args.workers,
        "image_size": args.image_size,
        "steps": [
            {"step": s, "images": c, "seconds": round(t, 2), "images_per_s": round(c / t, 1)}
            for s, c, t in rows
        ],
        "manifest": {
            k: counts[k]
            for k in ("images", "by_source", "by_label", "duplicate_groups", "cross_source_groups", "rejects")
        },
    }
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "bench_data.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
