"""The ``--engine`` options of ``covidxray predict`` and the handler of ``--engine ray``.

Only argparse at import time: ray, pyarrow and the predictor are imported when a Ray run starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ENGINES = ("local", "ray")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """``--engine``, ``--address``, ``--workers``, ``--cpus-per-worker``, ``--shard-size`` on ``predict``."""
    g = p.add_argument_group(
        "scale-out on Ray (--engine ray; needs the covidxray[ray] extra, see docs/SCALE.md)"
    )
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process; ray: Ray Data with a pool of model actors (default: %(default)s)",
    )
    g.add_argument(
        "--address",
        default=None,
        metavar="auto|ray://HOST:PORT",
        help="Ray cluster to join (default: start a local Ray instance)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="model actors (default: one per --cpus-per-worker CPUs of the cluster, or one per CPU)",
    )
    g.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        metavar="C",
        help="CPUs each actor reserves, and its compute threads (default: with --workers N the cluster's CPUs "
        "split evenly between the N actors, else 1: one actor per CPU, the fastest layout measured here)",
    )
    g.add_argument(
        "--shard-size",
        type=int,
        default=None,
        metavar="N",
        help="images per Parquet shard, the unit --resume skips (default: 10000)",
    )


def run_predict_ray(args: argparse.Namespace, paths: list[str]) -> int:
    """``covidxray predict --engine ray``: the rows the local engine would write, computed on Ray."""
    from covidxray.about import NOT_FOR_CLINICAL_USE
    from covidxray.bundle import ModelLoadError
    from covidxray.errors import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE, CLIError

    try:
        from covidxray.prediction.ray_engine import (
            DEFAULT_SHARD_SIZE,
            RayEngineError,
            RayPredictOptions,
            predict_with_ray,
        )
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CLIError(f"--engine ray needs Ray: pip install 'covidxray[ray]' ({exc})", EXIT_USAGE) from exc
    if args.explain:
        raise CLIError("--explain (Grad-CAM) runs with --engine local", EXIT_USAGE)
    if args.cpus_per_worker is not None and args.cpus_per_worker <= 0:
        raise CLIError(f"--cpus-per-worker must be positive, got {args.cpus_per_worker}", EXIT_USAGE)
    backend = args.backend or "onnx"  # ONNX Runtime in the actors unless --backend torch
    options = RayPredictOptions(
        model=args.model,
        backend=backend,
        strict=args.strict,
        address=args.address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        batch_size=args.batch_size,
        shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
        resume=args.resume,
        progress=not args.no_progress,
    )
    try:
        result = predict_with_ray(paths, Path(args.out) if args.out else None, options)
    except ModelLoadError as exc:
        raise CLIError(str(exc), EXIT_MODEL) from exc
    except RayEngineError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from exc
    s = result.summary
    lines = s.lines()
    if result.shards_skipped:
        lines.append(
            f"{result.rows_skipped} images in {result.shards_skipped} shard(s) already written were skipped (--resume)"
        )
    lines.append(f"decision: {result.decision_rule}")
    lines.append(f"model: {result.model_version} ({backend}) on Ray, {result.workers} worker(s)")
    lines.append(result.timing_line())
    if args.out:
        lines.append(f"wrote {s.total} rows to {result.output}")
    print("\n".join([*lines, NOT_FOR_CLINICAL_USE]), file=sys.stderr)
    if s.predicted == 0 and s.refused == 0:
        raise CLIError(f"none of the {s.total} images could be read", EXIT_INPUT)
    return 0
