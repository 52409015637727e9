"""Load test of ``covidxray serve``: 1,000 requests at concurrency 8 against 127.0.0.1 with a real X-ray.

Starts the server as a subprocess (the real CLI), waits for /healthz, warms up, then measures latency
percentiles, throughput, errors and the server's resident memory (VmRSS from /proc) before and after.
Writes ``benchmarks/results/bench_serve.json`` and prints a table.

    .venv/bin/python benchmarks/bench_serve.py [--model BUNDLE] [--requests 1000] [--concurrency 8] [--explain]

Targets on 2 cores: p50 <= 100 ms, p99 <= 500 ms, memory growth < 50 MB, zero errors.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COVIDXRAY_DATA", REPO.parent / "shared" / "data"))
DEFAULT_IMAGE = DATA / "COVID-19_Radiography_Dataset" / "COVID" / "COVID-1003.png"
TARGETS = {"p50_ms": 100.0, "p99_ms": 500.0, "rss_growth_mb": 50.0}
STAND_IN = (
    "no default model installed: stand-in 128-px seed_cnn6 bundle with random weights (built in a temp dir)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc/PID/stat (fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    return os.getloadavg()[0]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB, from /proc/PID/status (no psutil needed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def choose_model(requested: str | None, tmp: Path) -> tuple[str | None, str]:
    """The bundle to serve and why: as requested, the shipped default, else a stand-in built in ``tmp``."""
    if requested:
        return requested, "given with --model"
    from covidxray.bundle import DEFAULT_MODEL_DIR

    if (DEFAULT_MODEL_DIR / "config.json").exists():
        return None, f"shipped default model ({DEFAULT_MODEL_DIR})"
    return str(stand_in_bundle(tmp / "stand-in")), STAND_IN


def stand_in_bundle(out: Path) -> Path:
    """A 128-px 3-class seed_cnn6 bundle with seeded random weights: the default model's cost, not its skill."""
    import torch

    from covidxray.bundle import BundleConfig, save_bundle
    from covidxray.models.base import XRayNet
    from covidxray.models.registry import create_model
    from covidxray.preprocess import Preprocessing

    torch.manual_seed(0)
    pre = Preprocessing(image_size=128)
    net = create_model("seed_cnn6", num_classes=3, in_channels=1, image_size=128)
    config = BundleConfig(
        architecture="seed_cnn6",
        architecture_kwargs={"image_size": 128},
        classes=["covid", "normal", "pneumonia"],
        preprocessing=pre,
    )
    return save_bundle(out, XRayNet(net, pre.mean, pre.std, num_outputs=3).eval(), config)


async def run_load(
    url: str, image: bytes, name: str, n: int, concurrency: int
) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:

        async def worker() -> None:
            for _ in counter:
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, files={"files": (name, image, "image/png")})
                    ok = r.status_code == 200 and r.json()["predictions"]
                    if not ok:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append((time.perf_counter() - t0) * 1000.0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default=None, help="bundle to serve (default: the shipped default model, else a stand-in)"
    )
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="the X-ray every request uploads")
    ap.add_argument("--explain", action="store_true", help="ask for Grad-CAM too (explain=true)")
    ap.add_argument("--threads", type=int, default=None, help="passed to 'covidxray serve --threads'")
    ap.add_argument("--workers", type=int, default=None, help="passed to 'covidxray serve --workers'")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_serve.json")
    args = ap.parse_args(argv)

    image = args.image.read_bytes()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/api/v1/predict" + ("?explain=true" if args.explain else "")
    with tempfile.TemporaryDirectory() as tmp:
        model, model_choice = choose_model(args.model, Path(tmp))
        cmd = [
            sys.executable,
            "-m",
            "covidxray.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--audit-db",
            f"sqlite:///{tmp}/audit.sqlite",
        ] + (["--model", model] if model else [])
        for option in ("threads", "workers"):
            if getattr(args, option) is not None:
                cmd += [f"--{option}", str(getattr(args, option))]
        server = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            t0 = time.perf_counter()
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
                try:
                    health = httpx.get(f"{base}/healthz", timeout=1.0).json()
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            startup_s = time.perf_counter() - t0
            asyncio.run(run_load(url, image, args.image.name, args.warmup, args.concurrency))
            rss_before, cpu_before, load_before = rss_mb(server.pid), cpu_seconds(server.pid), load_average()
            t0 = time.perf_counter()
            latencies, errors = asyncio.run(
                run_load(url, image, args.image.name, args.requests, args.concurrency)
            )
            wall = time.perf_counter() - t0
            rss_after, cpu_after, load_after = rss_mb(server.pid), cpu_seconds(server.pid), load_average()
        finally:
            server.terminate()
            server.wait(timeout=30)

    result = {
        "benchmark": "bench_serve",
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            [Path(sys.executable).name, "benchmarks/bench_serve.py", *(argv or sys.argv[1:])]
        ),
        "model": "(default)"
        if model is None
        else "(stand-in seed_cnn6, 128 px)"
        if model_choice == STAND_IN
        else model,
        "model_choice": model_choice,
        "model_version": health["model_version"],
        "image": str(args.image),
        "image_bytes": len(image),
        "explain": args.explain,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "errors": len(errors),
        "error_examples": errors[:5],
        "startup_s": round(startup_s, 2),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1),
        "throughput_rps": round(args.requests / wall, 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "rss_growth_mb": round(rss_after - rss_before, 1),
        "server_cpu_ms_per_request": round(1000 * (cpu_after - cpu_before) / args.requests, 1),
        "load_average_before_after": [round(load_before, 2), round(load_after, 2)],
        "serve_options": {"threads": args.threads, "workers": args.workers},
        "targets": TARGETS,
        "machine": machine(),
    }
    result["meets_targets"] = (
        result["errors"] == 0
        and result["p50_ms"] <= TARGETS["p50_ms"]
        and result["p99_ms"] <= TARGETS["p99_ms"]
        and result["rss_growth_mb"] < TARGETS["rss_growth_mb"]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"model: {result['model']} ({model_choice}), version {result['model_version']}")
    print(
        f"{args.requests} requests, concurrency {args.concurrency}, explain={args.explain}, {machine()['cpu']}"
    )
    rows = [
        ("errors", f"{result['errors']}", "0"),
        ("p50 latency", f"{result['p50_ms']} ms", f"<= {TARGETS['p50_ms']:g} ms"),
        ("p95 latency", f"{result['p95_ms']} ms", ""),
        ("p99 latency", f"{result['p99_ms']} ms", f"<= {TARGETS['p99_ms']:g} ms"),
        ("throughput", f"{result['throughput_rps']} req/s", ""),
        ("server CPU/request", f"{result['server_cpu_ms_per_request']} ms", ""),
        ("load avg before/after", " / ".join(map(str, result["load_average_before_after"])), ""),
        ("server RSS before", f"{result['rss_before_mb']} MB", ""),
        ("server RSS after", f"{result['rss_after_mb']} MB", ""),
        ("RSS growth", f"{result['rss_growth_mb']} MB", f"< {TARGETS['rss_growth_mb']:g} MB"),
    ]
    print(f"{'metric':<20}{'value':>16}  target")
    for name, value, target in rows:
        print(f"{name:<20}{value:>16}  {target}")
    print(f"meets targets: {result['meets_targets']}  -> {args.out.resolve().relative_to(REPO)}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
