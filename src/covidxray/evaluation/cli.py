"""``covidxray evaluate``, ``covidxray crossval`` and ``covidxray compare``.

Handlers import torch, pandas and scikit-learn lazily so ``covidxray --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from covidxray.about import NOT_FOR_CLINICAL_USE
from covidxray.errors import EXIT_INPUT, EXIT_MODEL, CLIError
from covidxray.evaluation.ray_trials import add_engine_arguments
from covidxray.training.cli import TRAIN_FIELDS, add_train_flags, given_train_options
from covidxray.vocabulary import EVALUATED_ROWS

DEFAULT_CACHE_DIR = Path("runs/cache")


# -- shared helpers ----------------------------------------------------------------------------------------------
def resolve_bundle(path: str | Path | None) -> Path:
    """The bundle folder meant by ``path`` (:func:`covidxray.bundle.resolve_model_path`; None: the shipped model),
    or exit code 5."""
    from covidxray.bundle import ModelLoadError, resolve_model_path

    try:
        return resolve_model_path(path, "torch")
    except ModelLoadError as exc:
        raise CLIError(str(exc), EXIT_MODEL) from exc


DEFAULT_MODEL_EVALUATION_DIR = Path("runs/evaluation-default")


def default_evaluation_dir(bundle: Path) -> Path:
    """Where ``evaluate`` writes by default and ``compare`` looks: ``<run>/evaluation`` for ``<run>/model``."""
    return bundle.parent / "evaluation"


def read_manifest_or_fail(path: str | Path):
    from covidxray.data.manifest import read_manifest

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{p}: manifest not found; build one with 'covidxray data build'", EXIT_INPUT)
    try:
        return read_manifest(p)
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(f"{p}: cannot read the manifest ({exc})", EXIT_INPUT) from exc


def _add_evaluation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="preprocessed image cache (default: %(default)s)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="patient bootstrap resamples for the 95%% intervals (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap and probe seed (default: %(default)s)")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.95,
        help="COVID sensitivity the operating point must reach on val (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="inference batch size (default: %(default)s)")
    p.add_argument("--no-probe", action="store_true", help="skip the source shortcut probe")
    p.add_argument(
        "--lung-attention",
        type=int,
        default=300,
        metavar="N",
        help="in-lung Grad-CAM share on a seeded sample of N evaluated images (0: skip; default: %(default)s)",
    )


def _options(args: argparse.Namespace, **overrides):
    from covidxray.evaluation.metrics_json import EvaluationOptions

    if args.bootstrap < 10:
        raise CLIError(f"--bootstrap must be at least 10, got {args.bootstrap}", 2)
    if not 0 < args.target_sensitivity <= 1:
        raise CLIError(f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}", 2)
    return EvaluationOptions(
        n_resamples=args.bootstrap,
        seed=args.seed,
        target_sensitivity=args.target_sensitivity,
        batch_size=args.batch_size,
        probe=not args.no_probe,
        lung_attention=max(0, args.lung_attention),
        **overrides,
    )


# -- evaluate ----------------------------------------------------------------------------------------------------
def tta_views_arg(value: str) -> int:
    """``--tta N|none`` -> the number of views (``none``: 1, no TTA)."""
    from covidxray.preprocess import MAX_TTA_VIEWS

    if value.strip().lower() in ("none", "off", "0", "1"):
        return 1
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 2 <= n <= MAX_TTA_VIEWS:
        raise argparse.ArgumentTypeError(
            f"expected a number of views from 2 to {MAX_TTA_VIEWS}, or none; got {value!r}"
        )
    return n


def add_tta_flag(p: argparse.ArgumentParser) -> None:
    """``--tta N|none``, shared by ``evaluate`` and ``predict``."""
    from covidxray.preprocess import TTA_VIEWS

    p.add_argument(
        "--tta",
        type=tta_views_arg,
        default=1,
        metavar="N|none",
        help="test-time augmentation: average the probabilities over the first N of the fixed views "
        f"{', '.join(TTA_VIEWS)} (about N times the time; default: none)",
    )


def _evaluate(args: argparse.Namespace) -> int:
    from covidxray.bundle import BundleError
    from covidxray.ensemble import EnsembleError
    from covidxray.evaluation.evaluate import METRICS_FILE, evaluate
    from covidxray.evaluation.terminal_summary import summary_lines

    store = not args.no_store_operating_point
    if args.model is None:  # the shipped model: evaluate it, never rewrite it
        bundles = [resolve_bundle(None)]
        default_out = DEFAULT_MODEL_EVALUATION_DIR
        store = False
    else:
        bundles = [resolve_bundle(m) for m in args.model]
        if len(bundles) > 1 and not args.out:
            raise CLIError("an ensemble (--model given more than once) needs --out DIR for its evaluation", 2)
        default_out = default_evaluation_dir(bundles[0])
    bundle = bundles[0]
    if args.tta > 1:
        default_out = default_out.with_name(f"{default_out.name}-tta{args.tta}")
    out = Path(args.out) if args.out else default_out
    df = read_manifest_or_fail(args.manifest)
    options = _options(args, split=args.split, store_operating_point=store, tta=args.tta)
    try:
        result = evaluate(
            bundles if len(bundles) > 1 else bundle,
            df,
            out,
            args.cache_dir,
            options,
            manifest_path=args.manifest,
        )
    except (BundleError, EnsembleError) as exc:
        raise CLIError(str(exc), EXIT_MODEL) from exc
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    for line in summary_lines(result):
        print(line)
    for note in result.get("notes", []):
        if note.startswith("predictions are "):
            print(note)
    print(f"wrote {out / METRICS_FILE}, {out / 'report.md'}, {out / 'report.html'}")
    print(NOT_FOR_CLINICAL_USE)
    return 0


# -- crossval ----------------------------------------------------------------------------------------------------
# TrainConfig fields a crossval fold takes from the command line (it sets manifest, model, out, holdout_source
# and cache_dir itself); ``--train-batch-size`` and ``--train-seed`` leave the evaluation's names free.
CROSSVAL_TRAIN_FIELDS = tuple(
    f for f in TRAIN_FIELDS if f not in ("manifest", "model", "out", "holdout_source", "cache_dir")
)
CROSSVAL_FLAG_NAMES = {"batch_size": "--train-batch-size", "seed": "--train-seed"}


def train_options(args: argparse.Namespace) -> dict:
    """The TrainConfig fields for every fold: ``--config FILE``, then the training flags given."""
    from covidxray.training.config import ConfigError, read_options

    opts = read_options(args.config) if args.config else {}
    fixed = sorted(set(opts) - set(CROSSVAL_TRAIN_FIELDS))
    if fixed:
        raise ConfigError(f"{args.config}: {args.command} sets {fixed} itself; remove them from the file")
    opts.update(given_train_options(args, CROSSVAL_TRAIN_FIELDS, "train_"))
    if isinstance(opts.get("classes"), str):
        opts["classes"] = [c.strip() for c in opts["classes"].split(",") if c.strip()]
    return opts


def _crossval(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from covidxray.evaluation.crossval import RESULT_FILE, crossval
    from covidxray.evaluation.ray_trials import runner_from_args

    df = read_manifest_or_fail(args.manifest)
    known = sorted(set(df["source"].astype(str)))
    if args.all:
        sources = known
    elif args.holdout_source:
        sources = list(dict.fromkeys(args.holdout_source))
    else:
        raise CLIError(
            f"give --holdout-source SOURCE or --all (sources in the manifest: {', '.join(known)})", 2
        )
    unknown = [s for s in sources if s not in known]
    if unknown:
        raise CLIError(
            f"source(s) {', '.join(unknown)} not in the manifest; its sources are {', '.join(known)}", 2
        )
    command = (
        "covidxray " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["crossval"] else ""
    )
    from covidxray.bundle import BundleError
    from covidxray.training.config import ConfigError

    if args.config and not args.config.is_file():
        raise CLIError(f"config file {args.config} not found", EXIT_INPUT)
    try:
        runner = runner_from_args(args, describe=lambda kw: f"fold holding out {kw['source']}")
        result = crossval(
            args.manifest,
            args.model,
            sources,
            args.out,
            train_options(args),
            _options(args),
            args.cache_dir,
            retrain=args.retrain,
            command=command,
            runner=runner,
        )
    except ConfigError as exc:
        raise CLIError(str(exc), 2) from exc
    except BundleError as exc:
        raise CLIError(str(exc), EXIT_MODEL) from exc
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    from covidxray.evaluation.metrics_report import cell

    print(f"{'held-out source':<22} {'macro AUC in-source':<28} {'macro AUC out-of-source':<28}")
    for f in result["folds"]:
        print(
            f"{f['held_out_source']:<22} {cell(f['macro_roc_auc']['in_source']):<28} "
            f"{cell(f['macro_roc_auc']['out_of_source']):<28}"
        )
        for n in f["notes"]:
            print(f"  note: {n}")
    print(
        f"wrote {Path(args.out) / RESULT_FILE}, {Path(args.out) / 'crossval.md'}, {Path(args.out) / 'crossval.html'}"
    )
    print(NOT_FOR_CLINICAL_USE)
    return 0


# -- compare -----------------------------------------------------------------------------------------------------
def _compare(args: argparse.Namespace) -> int:
    from covidxray.bundle import BundleError
    from covidxray.evaluation.compare import compare, train_run
    from covidxray.evaluation.ray_trials import run_locally, runner_from_args
    from covidxray.training.config import ConfigError

    if not args.runs and not args.train:
        raise CLIError("give run folders to compare, or --train MODEL ... with --manifest", 2)
    if args.train and not args.manifest:
        raise CLIError("--train needs --manifest: the data to train and evaluate on", 2)
    if args.manifest and not args.manifest.is_file():
        raise CLIError(f"{args.manifest}: manifest not found", EXIT_INPUT)
    if args.config and not args.config.is_file():
        raise CLIError(f"config file {args.config} not found", EXIT_INPUT)
    runs = list(args.runs)
    if args.train:  # one training per model: a trial each, here or as Ray tasks, every run in OUT/<model>
        names = list(dict.fromkeys(args.train))
        try:
            opts = train_options(args)
            runner = runner_from_args(args, describe=lambda kw: f"training of {kw['model']}")
            calls = [
                {
                    "manifest": str(args.manifest),
                    "model": name,
                    "out": str(Path(args.out) / name),
                    "cache_dir": str(args.cache_dir),
                    "train_options": opts,
                    "retrain": args.retrain,
                }
                for name in names
            ]
            runs += (runner or run_locally)(train_run, calls)
        except ConfigError as exc:
            raise CLIError(str(exc), 2) from exc
        except ValueError as exc:
            raise CLIError(str(exc), EXIT_INPUT) from exc
    bundles = [resolve_bundle(r) for r in runs]
    evaluations = [default_evaluation_dir(b) for b in bundles]
    options = _options(args, split=args.split) if args.manifest else None

    try:
        runner = runner_from_args(args, describe=lambda kw: f"evaluation of {kw['bundle']}")
        result = compare(
            bundles, args.out, evaluations, args.manifest, args.cache_dir, options, runner=runner
        )
    except BundleError as exc:
        raise CLIError(str(exc), EXIT_MODEL) from exc
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    for w in result["warnings"]:
        print(f"WARNING: {w}")
    print(f"wrote {Path(args.out) / 'comparison.md'}, {Path(args.out) / 'comparison.html'}")
    print(NOT_FOR_CLINICAL_USE)
    return 0


def register(subparsers) -> None:
    _register_evaluate(subparsers)
    _register_crossval(subparsers)
    _register_compare(subparsers)


def _register_crossval(subparsers) -> None:
    p = subparsers.add_parser(
        "crossval",
        help="leave-one-source-out: train on the other sources, evaluate on the held-out one",
        description=(
            "For each held-out source: train MODEL on the other sources, then report ROC AUC (macro and COVID, with "
            "95%% patient-bootstrap intervals) on the in-source test split and on every image of the held-out "
            "source. Writes crossval.json, crossval.md and crossval.html; each fold's run in OUT/holdout-SOURCE. "
            + NOT_FOR_CLINICAL_USE
        ),
    )
    p.add_argument("--model", required=True, help="registered architecture name, e.g. seed_cnn6")
    p.add_argument("--manifest", required=True, type=Path, help="manifest CSV (covidxray data build)")
    p.add_argument(
        "--holdout-source", action="append", metavar="SOURCE", help="source to hold out (repeatable)"
    )
    p.add_argument("--all", action="store_true", help="hold out each source of the manifest in turn")
    p.add_argument(
        "--out", type=Path, default=Path("runs/crossval"), help="output folder (default: %(default)s)"
    )
    p.add_argument("--retrain", action="store_true", help="train again even when a fold's run exists")
    p.add_argument(
        "--config", type=Path, help="YAML or JSON file of training options for every fold; flags override it"
    )
    add_train_flags(p, CROSSVAL_TRAIN_FIELDS, "train_", CROSSVAL_FLAG_NAMES)
    _add_evaluation_options(p)
    add_engine_arguments(p, "folds")
    p.set_defaults(func=_crossval)


def _register_compare(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="models side by side: parameters, training time, images/s, every metric with its interval",
        description=(
            "Compare trained runs (run folders or bundle folders), or train models first under one protocol "
            "(--train MODEL ..., one trial per model, as Ray tasks with --engine ray). Metrics come from each "
            "run's evaluation (<run>/evaluation/metrics.json); runs without one are evaluated first when "
            "--manifest is given. "
            "Writes comparison.md, comparison.html and comparison.json. " + NOT_FOR_CLINICAL_USE
        ),
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders (with model/) or bundle folders")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest to train on (--train) and to evaluate runs that have no evaluation",
    )
    p.add_argument(
        "--train",
        nargs="+",
        metavar="MODEL",
        default=[],
        help="registered architectures to train first, one run each in OUT/MODEL under one protocol (the "
        "training flags below; a finished run is kept unless --retrain), then compared with the RUNs",
    )
    p.add_argument("--retrain", action="store_true", help="with --train: train again even when a run exists")
    p.add_argument(
        "--config", type=Path, help="with --train: YAML or JSON file of training options; flags override it"
    )
    add_train_flags(p, CROSSVAL_TRAIN_FIELDS, "train_", CROSSVAL_FLAG_NAMES)
    p.add_argument(
        "--split",
        default="test",
        choices=EVALUATED_ROWS,
        help="split to evaluate missing runs on (default: %(default)s)",
    )
    _add_evaluation_options(p)
    add_engine_arguments(p, "trainings (--train) and evaluations of runs that lack one")
    p.set_defaults(func=_compare)


def _register_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="metrics with patient-bootstrap intervals, per source, operating point, shortcut probe",
        description=(
            "Evaluate a saved model on one split of a manifest: accuracy, loss, per-class sensitivity/specificity/"
            "PPV/NPV/F1, ROC and PR AUC, calibration, each with a 95%% patient-bootstrap interval, overall and per "
            "source; the COVID operating point chosen on val (stored in the bundle); and a probe of how well the "
            "model's features reveal the image source. Writes metrics.json, report.md and report.html. "
            + NOT_FOR_CLINICAL_USE
        ),
    )
    p.add_argument(
        "--model",
        default=None,
        action="append",
        help="a run folder (with model/) or a bundle folder (default: the shipped model, never modified); "
        "give it twice or more to evaluate an ensemble (mean probability; needs --out)",
    )
    p.add_argument("--manifest", required=True, type=Path, help="manifest CSV (covidxray data build)")
    p.add_argument(
        "--split",
        default="test",
        choices=EVALUATED_ROWS,
        help="rows to evaluate (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: <run>/evaluation; runs/evaluation-default for the shipped model; "
        "-ttaN appended with --tta N)",
    )
    add_tta_flag(p)
    p.add_argument(
        "--no-store-operating-point",
        action="store_true",
        help="do not write the chosen operating point into the bundle's config.json",
    )
    _add_evaluation_options(p)
    p.set_defaults(func=_evaluate)
