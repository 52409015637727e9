"""Pinning the CPU kernels of PyTorch, oneDNN and MKL, so a seeded run gives the same weights on AVX2 and AVX512
machines (``covidxray --kernels avx2 ...``).

PyTorch, oneDNN and MKL each pick their float kernels by CPU: on an AVX512 machine they round differently from
an AVX2 one, and 20 epochs of training turn last-digit differences into another model (README, "The recipe
trains with seeded sampling"). These libraries read their limits from the environment once, when they load, so
the pin is four environment variables set before ``torch`` is imported; child processes (data-loader workers,
fold runs) inherit them, and the trials of ``crossval`` / ``compare --engine ray`` get them as a Ray
``runtime_env`` (:func:`ray_runtime_env`), since Ray starts its workers itself. (``predict --engine ray`` does
not: inference kernels move probabilities in their last digits only.)

Measured (BENCHMARKS.md, "Same weights on AVX2 and AVX512 machines"): ``covidxray --kernels avx2 run`` on a
2-vCPU AMD EPYC with AVX512 gave the weights ``15e5752c…`` that ``covidxray run`` gives natively on an AVX2 AMD
EPYC, and the folds' held-out AUCs to the last digit, in 1.16 times the native ``make run`` time of the same
machine. An x86-64 CPU without AVX2, or another architecture (aarch64), cannot run these kernels: there the pin
changes nothing and the bundle's ``versions`` say so.
"""

from __future__ import annotations

import os
import sys

NATIVE = "native"
PINS: dict[str, dict[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorised kernels
        "ONEDNN_MAX_CPU_ISA": "AVX2",  # convolutions, matmuls (oneDNN)
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # BLAS (MKL)
        "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: the same code path on any CPU
    }
}
CHOICES = (NATIVE, *PINS)


class KernelPinError(RuntimeError):
    """The kernels cannot be pinned any more: torch is already loaded with others."""


def pin_kernels(name: str) -> None:
    """Set the environment that makes PyTorch, oneDNN and MKL use ``name``'s kernels; ``native`` does nothing.

    Must run before ``torch`` is imported; if it already is, raises :class:`KernelPinError` unless the same pin
    was set in the environment before it loaded.
    """
    if name == NATIVE:
        return
    if name not in PINS:
        raise ValueError(f"unknown kernels {name!r}: choose one of {', '.join(CHOICES)}")
    env = PINS[name]
    if "torch" in sys.modules:
        if pinned_kernels() == name:
            return
        settings = " ".join(f"{k}={v}" for k, v in env.items())
        raise KernelPinError(
            f"--kernels {name}: torch is already loaded with its own kernels; start a new process with "
            f"--kernels {name}, or set {settings} in the environment before Python starts"
        )
    os.environ.update(env)


def ray_runtime_env() -> dict[str, dict[str, str]] | None:
    """The Ray ``runtime_env`` that carries the pin to a cluster's workers (they are started by Ray, not by this
    process, so they do not inherit its environment); None when nothing is pinned."""
    name = pinned_kernels()
    return {"env_vars": dict(PINS[name])} if name else None


def kernels_in_use() -> tuple[str, str | None]:
    """(the CPU capability torch runs, the pin set in the environment or None); imports torch."""
    import torch

    return torch.backends.cpu.get_cpu_capability(), pinned_kernels()


def pinned_kernels() -> str | None:
    """The pin the environment sets (``avx2``), or None when the libraries pick their kernels by CPU."""
    for name, env in PINS.items():
        if all(os.environ.get(k) == v for k, v in env.items()):
            return name
    return None
