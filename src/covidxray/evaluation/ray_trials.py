"""Independent trials as Ray tasks: ``covidxray crossval --engine ray`` (one task per held-out source) and
``covidxray compare --engine ray`` (one task per run to evaluate).

A trial is a plain function of keyword arguments that trains and/or evaluates and writes its own run folder
(:func:`covidxray.evaluation.crossval.run_fold`, :func:`covidxray.evaluation.evaluate.evaluate`). The local
engine calls it in a loop; :func:`ray_runner` submits one task each, reserving ``num_cpus`` per task, and returns
the results in submission order, so every output file is the same as with the local engine.

Tasks run in the driver's working directory when the worker can see it (a local Ray instance, or a cluster whose
nodes mount the same shared folder at the same place), so relative paths mean the same thing in both engines.

Ray is imported lazily, only by these functions.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

Trial = Callable[..., Any]
Runner = Callable[[Trial, Sequence[dict[str, Any]]], list[Any]]


def add_engine_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """``--engine local|ray``, ``--address`` and ``--cpus-per-trial`` on ``crossval`` and ``compare``."""
    g = p.add_argument_group("scale-out on Ray (needs the covidxray[ray] extra, see docs/SCALE.md)")
    g.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help=f"local: {what} one after the other here; ray: one Ray task each (default: %(default)s)",
    )
    g.add_argument(
        "--address", default=None, metavar="auto|ray://HOST:PORT", help="Ray cluster (default: a local one)"
    )
    g.add_argument(
        "--cpus-per-trial",
        type=float,
        default=None,
        metavar="C",
        help="CPUs each Ray task reserves (default: --threads, else 1)",
    )


def runner_from_args(args: argparse.Namespace, describe: Callable[[dict[str, Any]], str]) -> Runner | None:
    """The runner ``--engine`` asks for: None (local) or :func:`ray_runner`."""
    if args.engine != "ray":
        return None
    cpus = args.cpus_per_trial or getattr(args, "train_threads", None) or 1
    if cpus <= 0:
        raise ValueError(f"--cpus-per-trial must be positive, got {cpus}")
    return ray_runner(args.address, float(cpus), describe=describe)


def run_locally(fn: Trial, calls: Sequence[dict[str, Any]]) -> list[Any]:
    """The local engine: one trial after the other, in this process."""
    return [fn(**kwargs) for kwargs in calls]


def connect(address: str | None = None, log: Callable[[str], None] | None = None) -> tuple[bool, Any]:
    """Join the Ray cluster at ``address`` (``auto``, ``ray://host:port``) or the Ray this process already runs;
    with no address, Ray joins a cluster started on this machine by ``ray start`` or starts a local one. Returns (whether this call started Ray, the ``ray`` module)."""
    import ray

    if ray.is_initialized():
        return False, ray
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    if log is not None:
        log(
            f"Ray: {'joined ' + address if address else 'local instance'}, {ray.cluster_resources().get('CPU', 0):g} CPUs"
        )
    return True, ray


def _in_directory(cwd: str, fn: Trial, kwargs: dict[str, Any]) -> Any:
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return fn(**kwargs)


def ray_runner(
    address: str | None = None,
    num_cpus: float = 1.0,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    describe: Callable[[dict[str, Any]], str] = lambda kw: "trial",
) -> Runner:
    """A runner that sends each trial to Ray as a task reserving ``num_cpus`` CPUs (``max_retries=0``: a trial
    that fails raises here with the task's own exception, so the CLI reports it as it would locally)."""

    def run(fn: Trial, calls: Sequence[dict[str, Any]]) -> list[Any]:
        if not calls:
            return []
        started, ray = connect(address, log)
        try:
            from covidxray.kernels import ray_runtime_env

            options: dict[str, Any] = {"num_cpus": num_cpus, "max_retries": 0}
            pin = ray_runtime_env()
            if pin:  # covidxray --kernels avx2: the trials train with the same kernels as locally
                options["runtime_env"] = pin
            task = ray.remote(**options)(_in_directory)
            cwd = os.getcwd()
            refs = [task.remote(cwd, fn, dict(kwargs)) for kwargs in calls]
            names = {ref: describe(kwargs) for ref, kwargs in zip(refs, calls, strict=True)}
            cpus = ray.cluster_resources().get("CPU", 0)
            log(f"{len(refs)} Ray task(s), {num_cpus:g} CPU(s) each, on a cluster of {cpus:g} CPUs")
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)  # raises the task's exception at once
                log(f"done: {names[done[0]]} ({len(refs) - len(pending)}/{len(refs)})")
            return ray.get(refs)
        finally:
            if started:
                ray.shutdown()

    return run
