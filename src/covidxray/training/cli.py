"""``covidxray train``: train a registered model on a manifest, or ``--resume`` an interrupted run.

Options come from the :class:`~covidxray.training.config.TrainConfig` defaults, then ``--config FILE``
(YAML/JSON), then the flags given. Runs unchanged under ``torchrun --nproc_per_node N -m covidxray.cli train``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

from covidxray.errors import EXIT_INPUT, EXIT_USAGE, CLIError
from covidxray.preprocess import CHANNELS, INTENSITY_MODES, RESIZE_MODES
from covidxray.training.config import (
    ADVERSARIES,
    AUGMENTS,
    CLASS_WEIGHTS,
    LOSSES,
    OPTIMIZERS,
    OPTION_TYPES,
    SAMPLERS,
    TrainConfig,
)
from covidxray.vocabulary import INITS

# TrainConfig fields set by a flag of the same name (``--no-progress`` sets ``progress``)
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name != "progress")
# the only options a resumed run may change
_RESUME_OVERRIDES = ("epochs", "max_minutes", "workers", "patience", "cache_dir", "threads")

# What a flag offers, per TrainConfig field: its allowed values (argparse ``choices``) and its help text.
CHOICES: dict[str, tuple] = {
    "optimizer": OPTIMIZERS,
    "loss": LOSSES,
    "augment": AUGMENTS,
    "class_weights": CLASS_WEIGHTS,
    "sampler": SAMPLERS,
    "init": INITS,
    "intensity": INTENSITY_MODES,
    "resize": RESIZE_MODES,
    "channels": CHANNELS,
    "adversary": ADVERSARIES,
}
HELP: dict[str, str] = {
    "manifest": "manifest CSV (covidxray data build)",
    "model": "registered model name",
    "out": "run directory (default runs/MODEL)",
    "epochs": "training epochs",
    "image_size": "input size in pixels",
    "batch_size": "training batch size",
    "lr": "learning rate",
    "loss": "ce: softmax; bce: one sigmoid output (2 classes; P of the second class)",
    "classes": "comma-separated task classes, e.g. covid,normal,pneumonia (default), covid,normal, covid,rest",
    "seed": "training seed",
    "workers": "processes decoding images into the cache on first use",
    "weights": "local state dict to start the backbone from (the head stays new)",
    "init": "weight initialisation: default (the architecture's own), glorot (Keras, as in the seeds), he",
    "freeze_backbone": "train the head only",
    "patience": "epochs without validation improvement before stopping (0: never)",
    "intensity": "intensity normalisation of the preprocessing",
    "resize": "how an image becomes square (lungcrop: the lung fields found by the shipped segmenter, plus a margin)",
    "channels": "network input channels",
    "lungcrop_margin": "resize lungcrop / lungmask: the lung fields' box widened by this share of its size on each "
    "side (0 to 0.5)",
    "holdout_source": "leave this source, and its images' copies in other sources, out of train and val "
    "(for a cross-source test)",
    "cache_dir": "image cache folder",
    "max_minutes": "stop after the epoch that exceeds this training time",
    "epoch_samples": "images drawn per epoch (0: the train split's size)",
    "checkpoint_every": "steps between mid-epoch checkpoints (0: epoch ends)",
    "threads": "torch threads (default: OMP_NUM_THREADS, else 2; use 1 on a busy shared CPU)",
    "adversary": "source adversary on the features behind gradient reversal: marginal (predict the source) or "
    "conditional (predict the source within each class)",
    "adversary_weight": "final gradient-reversal lambda (DANN schedule from 0)",
    "acquisition": "acquisition randomisation: chance of each scanner-like transform per image (gamma, window, "
    "blur/sharpen, noise, JPEG, down-up sampling, border crop/pad, corner boxes); 0: off",
    "epoch_weights": "also keep every epoch's weights (epochs/epoch-NNN.safetensors), so the epoch can be chosen "
    "afterwards on out-of-source figures (covidxray.training.trainer.reselect_epoch)",
    "holdout_final_only": "with --holdout-source: score the held-out source once at the end, not after every "
    "epoch (for models slow at inference; the same weights, no per-epoch holdout columns in the history)",
    "source_power": "balanced sampler: within a label, each source is drawn in proportion to its image count to "
    "this power (0: every source equally, 0.5: square root, 1: every image equally)",
    "label_smoothing": "label smoothing: this share of each training target is spread evenly over the classes "
    "(0: off)",
    "weight_decay": "weight decay (Adam becomes AdamW, decoupled; rmsprop / sgd take it as L2); 0: off",
    "group_dro": "GroupDRO step size: minimise the worst (source, class) group's loss instead of the mean, the "
    "groups' weights moved by exp(step x group loss) at every batch (0: off; 0.01 in the paper)",
    "covid_masked_sources": "comma-separated sources holding no COVID-19 by construction (e.g. kermany) whose "
    "images train only the choice among the other classes: their loss is the softmax over the classes other than "
    "COVID-19, so telling such a source apart cannot lower p(covid) (default: none)",
    "covid_mask_weight": "with --covid-masked-sources: the masked loss's share for those sources' rows; the rest "
    "is the plain cross-entropy, which lets them lower p(covid) a little (1: wholly masked, the default)",
    "erasing": "random erasing: chance that an image gets one box of 2-33 %% of its area filled with noise (0: off)",
    "sam": "sharpness-aware minimisation: each step's gradient is taken at the weights moved this far (rho) "
    "along the normalised gradient, then applied to the unmoved weights; twice the compute per step (0: off; "
    "0.05 in the paper)",
    "mixup": "mixup alpha: train on Beta(alpha, alpha) blends of image pairs, the loss blended alike (0: off)",
    "select_epoch": "keep the weights of this epoch (chosen out of source, e.g. on leave-one-source-out curves) "
    "instead of the best on in-source validation, and stop after it (0: best on validation)",
    "average_every": "with --average-from: average the weights every this many optimizer steps of those epochs "
    "instead of at their ends (1: dense, as SWAD) (0: epoch ends)",
    "average_from": "weight averaging (SWA): keep the mean of the weights of this epoch to the last one instead of "
    "one epoch (every epoch's weights kept; patience does not stop the run) (0: off)",
}
_TYPES = {"int": int, "float": float, "str": str}


def add_train_flags(
    parser: argparse.ArgumentParser,
    names: tuple[str, ...] = TRAIN_FIELDS,
    dest_prefix: str = "",
    flags: dict[str, str] | None = None,
) -> None:
    """One flag per :class:`TrainConfig` field in ``names`` (``--image-size`` for ``image_size``; ``flags``
    renames some), typed from the field and restricted to its ``choices``; unset flags stay None, so
    :func:`given_train_options` returns only what was given. ``dest_prefix`` keeps them apart from a parser's
    own options (``crossval`` uses ``train_``)."""
    for name in names:
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        text = HELP.get(name, name.replace("_", " "))
        default = getattr(TrainConfig, name, None)
        if OPTION_TYPES[name] == "bool":
            parser.add_argument(flag, dest=dest_prefix + name, action="store_true", default=None, help=text)
            continue
        typ = _TYPES.get(OPTION_TYPES[name], str)
        if default not in (None, "") and name not in ("classes", "out"):
            text += f" (default: {default})"
        choices = CHOICES.get(name)
        parser.add_argument(
            flag,
            dest=dest_prefix + name,
            type=typ,
            choices=choices,
            default=None,
            metavar=None if choices else name.upper(),
            help=text,
        )


def given_train_options(
    args: argparse.Namespace, names: tuple[str, ...] = TRAIN_FIELDS, dest_prefix: str = ""
) -> dict:
    """The :class:`TrainConfig` fields among ``names`` that were given on the command line."""
    given = {n: getattr(args, dest_prefix + n, None) for n in names}
    return {n: v for n, v in given.items() if v is not None}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a classifier on a manifest (or --resume a run)",
        description="Train on the manifest's train split, validate every epoch, save the best model as a bundle "
        "in OUT/model. Defaults: model seed_cnn6, 15 epochs, 128 px, 3 classes, light augmentation, "
        "balanced sampling.",
    )
    p.add_argument("--config", type=Path, help="YAML or JSON file of training options; flags override it")
    add_train_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or epoch lines")
    p.add_argument(
        "--resume", metavar="RUN_DIR", type=Path, help="continue this run from its last checkpoint"
    )
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The effective :class:`TrainConfig`: defaults < ``--config`` file < flags."""
    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    base.update(given_train_options(args))
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
            overrides = given_train_options(args, _RESUME_OVERRIDES)
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
