"""``covidxray train``: train a registered model on a manifest, or ``--resume`` an interrupted run.

Options come from the :class:`~covidxray.training.config.TrainConfig` defaults, then ``--config FILE``
(YAML/JSON), then the flags given. Runs unchanged under ``torchrun --nproc_per_node N -m covidxray.cli train``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

from covidxray.cli import EXIT_INPUT, EXIT_USAGE, CLIError
from covidxray.training.config import (
    ADVERSARIES,
    AUGMENTS,
    CLASS_WEIGHTS,
    INITS,
    LOSSES,
    OPTIMIZERS,
    SAMPLERS,
    TrainConfig,
)

# TrainConfig fields set by a flag of the same name (``--no-progress`` sets ``progress``)
_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name != "progress")
# the only options a resumed run may change
_RESUME_OVERRIDES = ("epochs", "max_minutes", "workers", "patience", "cache_dir", "threads")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a classifier on a manifest (or --resume a run)",
        description="Train on the manifest's train split, validate every epoch, save the best model as a bundle "
        "in OUT/model. Defaults: model seed_cnn6, 15 epochs, 128 px, 3 classes, light augmentation, "
        "balanced sampling.",
    )
    a = p.add_argument
    a("--manifest", help="manifest CSV (covidxray data build)")
    a("--model", help="registered model name (default seed_cnn6)")
    a("--out", help="run directory (default runs/MODEL)")
    a("--config", type=Path, help="YAML or JSON file of training options; flags override it")
    a("--epochs", type=int)
    a("--image-size", type=int)
    a("--batch-size", type=int)
    a("--lr", type=float)
    a("--optimizer", choices=OPTIMIZERS)
    a(
        "--loss",
        choices=LOSSES,
        help="ce: softmax; bce: one sigmoid output (2 classes; P of the second class)",
    )
    a(
        "--classes",
        help="comma-separated task classes, e.g. covid,normal,pneumonia (default), covid,normal, covid,rest",
    )
    a("--augment", choices=AUGMENTS)
    a("--class-weights", choices=CLASS_WEIGHTS)
    a("--sampler", choices=SAMPLERS)
    a("--seed", type=int)
    a("--workers", type=int, help="processes decoding images into the cache on first use")
    a("--weights", help="local state dict to start the backbone from (the head stays new)")
    a(
        "--init",
        choices=INITS,
        help="weight initialisation: default (the architecture's own), glorot (Keras, as in the seeds), he",
    )
    a(
        "--adversary",
        choices=ADVERSARIES,
        help="source adversary on the features behind gradient reversal: marginal (predict the source) or "
        "conditional (predict the source within each class); default none",
    )
    a(
        "--adversary-weight",
        type=float,
        help="final gradient-reversal lambda (DANN schedule from 0; default 0.5)",
    )
    a(
        "--acquisition",
        type=float,
        help="acquisition randomisation: chance of each scanner-like transform per image (gamma, window, "
        "blur/sharpen, noise, JPEG, down-up sampling, border crop/pad, corner boxes); default 0 (off)",
    )
    a("--freeze-backbone", action="store_true", default=None, help="train the head only")
    a("--patience", type=int, help="epochs without validation improvement before stopping (0: never)")
    a("--intensity", choices=("equalize", "percentile", "minmax", "none"))
    a("--resize", choices=("squash", "pad", "crop"))
    a("--channels", type=int, choices=(1, 3))
    a("--holdout-source", help="leave this source out of train and val (for a cross-source test)")
    a("--cache-dir")
    a("--max-minutes", type=float, help="stop after the epoch that exceeds this training time")
    a("--epoch-samples", type=int, help="images drawn per epoch (default: the train split's size)")
    a("--checkpoint-every", type=int, help="steps between mid-epoch checkpoints (default 50; 0: epoch ends)")
    a(
        "--threads",
        type=int,
        help="torch threads (default: OMP_NUM_THREADS, else 2; use 1 on a busy shared CPU)",
    )
    a("--no-progress", action="store_true", help="no progress bar or epoch lines")
    a("--resume", metavar="RUN_DIR", type=Path, help="continue this run from its last checkpoint")
    p.set_defaults(func=run)


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def build_config(args: argparse.Namespace):
    """The effective :class:`TrainConfig`: defaults < ``--config`` file < flags."""
    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    base.update(_given(args, _FIELDS))
    if "out" not in base:
        base["out"] = f"runs/{base.get('model', TrainConfig.model)}"
    base["progress"] = not args.no_progress
    return TrainConfig.from_dict(base)


def run(args: argparse.Namespace) -> int:
    from covidxray.bundle import BundleError
    from covidxray.imageio import ImageLoadError
    from covidxray.models.weights import PretrainedWeightsError
    from covidxray.training.checkpoint import ResumeError
    from covidxray.training.config import ConfigError
    from covidxray.training.dataset import DataError
    from covidxray.training.trainer import resume, train

    try:
        if args.resume:
            overrides = _given(args, _RESUME_OVERRIDES)
            overrides["progress"] = not args.no_progress
            out = resume(args.resume, **overrides)
        else:
            if args.config and not args.config.is_file():
                raise CLIError(f"config file {args.config} not found", EXIT_INPUT)
            cfg = build_config(args)
            if not cfg.manifest:
                raise CLIError("--manifest is required (a CSV from 'covidxray data build')", EXIT_USAGE)
            out = train(cfg)
    except ConfigError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from exc
    except (DataError, ResumeError, BundleError) as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    except (PretrainedWeightsError, ImageLoadError, FileNotFoundError) as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    if os.environ.get("RANK", "0") == "0":
        print(f"bundle: {Path(out) / 'model'}")
    return 0
