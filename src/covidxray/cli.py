"""The ``covidxray`` command line. Each stage of the data flow registers its own sub-commands.

Sub-command modules expose ``register(subparsers)``; handlers import heavy libraries (torch, pandas) lazily
so that e.g. ``covidxray predict --backend onnx`` starts without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from covidxray.about import NOT_FOR_CLINICAL_USE, __version__
from covidxray.errors import EXIT_INTERRUPTED, EXIT_USAGE, CLIError
from covidxray.kernels import CHOICES, NATIVE, KernelPinError, pin_kernels

# In data-flow order: sources -> manifest -> training -> evaluation -> prediction -> web -> the whole pipeline.
COMMAND_MODULES = (
    "covidxray.data.cli",
    "covidxray.training.cli",
    "covidxray.evaluation.cli",
    "covidxray.prediction.cli",
    "covidxray.prediction.recalibrate_cli",
    "covidxray.prediction.segment_cli",
    "covidxray.web.cli",
    "covidxray.pipeline",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidxray",
        description=f"Chest X-ray COVID-19 / pneumonia / normal classifiers. {NOT_FOR_CLINICAL_USE}",
    )
    parser.add_argument("--version", action="version", version=f"covidxray {__version__}")
    parser.add_argument(
        "--kernels",
        choices=CHOICES,
        default=NATIVE,
        help="CPU kernels for PyTorch, oneDNN and MKL: 'native' (default) lets them pick by CPU, so weights trained "
        "on an AVX512 machine differ from an AVX2 one's; 'avx2' pins AVX2 kernels, giving the same weights on "
        "both (make run about 1.2x slower on AVX512). Before or after the command: covidxray --kernels avx2 run",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command in sub.choices.values():  # also after the command (covidxray run --kernels avx2)
        command.add_argument(
            "--kernels",
            choices=CHOICES,
            default=argparse.SUPPRESS,
            help="as covidxray --kernels avx2 COMMAND: native (by CPU) or avx2 (the same weights on AVX2 and AVX512)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(
        sys.argv[1:] if argv is None else argv
    )  # e.g. to print the exact command that resumes a run
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        pin_kernels(args.kernels)  # before any handler imports torch
    except KernelPinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        rc = args.func(args)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
