"""Training throughput of every registered model on the CPU: images/s for forward + backward + Adam step.

Batch 32 of random 1-channel images, 3 classes, cross-entropy, ``torch.set_num_threads(2)``; 2 warm-up steps,
then timed steps until 5 are done or the ~10 s budget is spent (at least 1). Prints a table and writes
``benchmarks/results/bench_train.json``.

    .venv/bin/python benchmarks/bench_train.py [--models seed_cnn6,resnet18] [--sizes 128,224] [--threads 2]
        [--memory-format both --out benchmarks/results/bench_train_channels_last.json]

``--memory-format`` picks the tensor layout of the model and its input: ``nchw`` (PyTorch's default, the table's
original figures), ``channels_last`` (what ``covidxray train`` uses) or ``both`` (each entry in both layouts, with
the speed-up). ``--kernels avx2`` pins PyTorch, oneDNN and MKL to AVX2 kernels as ``covidxray --kernels avx2``
does (set before torch loads); the JSON records the kernels torch used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

from covidxray.kernels import CHOICES, pin_kernels

# the pin is read by the libraries when they load, so it is set before torch is imported (argparse reads the flag
# here as main() does, so --kernels=avx2 works too)
_early = argparse.ArgumentParser(add_help=False)
_early.add_argument("--kernels", choices=CHOICES, default="native")
pin_kernels(_early.parse_known_args(sys.argv[1:])[0].kernels)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from covidxray.models import create_model, list_models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_train.json"


def time_training(
    name: str,
    size: int,
    batch: int,
    steps: int,
    budget_s: float,
    warmup: int = 2,
    channels_last: bool = False,
) -> dict:
    """Images/s of training steps of ``name`` at ``size`` px (after ``warmup`` untimed steps)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=1, image_size=size).train()
    x = torch.rand(batch, 1, size, size)
    if channels_last:  # as covidxray.training.trainer does
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    y = torch.arange(batch) % 3

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < steps and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    per_step = sorted(times)[len(times) // 2]  # median: robust to other processes' bursts
    return {
        "model": name,
        "image_size": size,
        "memory_format": "channels_last" if channels_last else "nchw",
        "batch": batch,
        "timed_steps": len(times),
        "median_step_s": round(per_step, 4),
        "images_per_s": round(batch / per_step, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write(out: Path, rows: list[dict], threads: int) -> None:
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": _cpu_name(),
        "load_average": os.getloadavg(),
        "note": "forward+backward+Adam, batch of random 1-channel images, 3 classes; median of timed steps",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(list_models()), help="comma-separated registered names")
    ap.add_argument("--sizes", default="128,224", help="comma-separated image sizes in px")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per entry")
    ap.add_argument(
        "--budget", type=float, default=10.0, help="seconds of timed steps per entry (at least one)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-format", choices=("nchw", "channels_last", "both"), default="nchw")
    ap.add_argument(
        "--kernels",
        choices=CHOICES,
        default="native",
        help="native (by CPU) or avx2 (pinned; as covidxray --kernels)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]

    formats = {"nchw": [False], "channels_last": [True], "both": [False, True]}[args.memory_format]
    rows = []
    print(f"{'model':<16}{'size':>6}{'layout':>15}{'params':>13}{'steps':>7}{'s/step':>9}{'images/s':>10}{'speed-up':>10}", flush=True)  # fmt: skip
    for name in models:
        for size in sizes:
            for cl in formats:
                row = time_training(name, size, args.batch, args.steps, args.budget, channels_last=cl)
                if cl and len(formats) == 2:
                    row["speedup_vs_nchw"] = round(row["images_per_s"] / rows[-1]["images_per_s"], 2)
                rows.append(row)
                # written after every entry, so an interrupted long run keeps its figures
                _write(args.out, rows, args.threads)
                up = f"x{row['speedup_vs_nchw']:.2f}" if "speedup_vs_nchw" in row else ""
                print(
                    f"{name:<16}{size:>6}{row['memory_format']:>15}{row['parameters']:>13,}{row['timed_steps']:>7}"
                    f"{row['median_step_s']:>9.3f}{row['images_per_s']:>10.1f}{up:>10}",
                    flush=True,
                )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
