"""``covidxray predict``, ``covidxray export`` and ``covidxray guard``.

Only argparse and the bundle's facts are imported here: handlers import the predictor lazily, and the predictor imports torch only for
the torch backend, so ``covidxray predict --backend onnx`` starts without torch (and without pandas).

Exit codes of ``predict`` (see :mod:`covidxray.errors`): 0 predicted; 3 bad input (missing file or folder, empty
folder, unreadable/empty/truncated/too small/too large image, undecodable DICOM -- and, for ``--images``, when
not one image could be read); 4 refused by the input guard under ``--strict`` (single image); 5 the model cannot
be found or loaded; 2 bad arguments, including an ``--out`` that cannot be written (a folder, a read-only place)
or already exists without ``--resume``/``--overwrite`` -- all checked before the model loads; 130 interrupted
(Ctrl-C) after writing a valid partial file and printing the command that resumes it. In a batch, bad images
are rows with an ``error`` and do not change the code.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from pathlib import Path

from covidxray.bundle import BACKENDS, ONNX_FILE
from covidxray.evaluation.cli import add_tta_flag


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_predict(subparsers)
    _register_export(subparsers)
    _register_guard(subparsers)


# -- predict -----------------------------------------------------------------------------------------------------
def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict one image or a folder of images",
        description="Predict covid / normal / pneumonia for chest X-rays (PNG, JPEG, 16-bit PNG, DICOM). "
        "Exit codes: 0 ok, 2 usage, 3 bad input, 4 refused by the input guard (--strict), 5 model not loadable. "
        "Research use only, not for clinical diagnosis.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", metavar="PATH", help="one image file")
    what.add_argument(
        "--images",
        metavar="DIR|GLOB",
        help="a folder (searched recursively) or a quoted glob; with --engine ray also a URI (s3://..., file://...)",
    )
    what.add_argument(
        "--manifest", metavar="M", type=Path, help="every image of a manifest CSV (covidxray data build)"
    )
    p.add_argument(
        "--model",
        metavar="RUN",
        action="append",
        default=None,
        help="run folder, bundle folder or .onnx file (default: the shipped default model); "
        "give it twice or more for an ensemble (mean probability; the first model's operating point decides)",
    )
    add_tta_flag(p)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="inference backend (default: onnx for a .onnx --model or --engine ray, else torch)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --images: write rows to FILE (.csv or .jsonl; default: CSV on stdout); with --engine ray, "
        "a name without .csv/.jsonl is a folder of Parquet shards",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --out: append to FILE, skipping images whose path is already in it (after an interruption); "
        "with --engine ray: keep the Parquet shards an interrupted run wrote, predict the rest",
    )
    p.add_argument("--overwrite", action="store_true", help="with --out: replace an existing FILE")
    p.add_argument("--json", action="store_true", help="with --image: print the result as JSON")
    p.add_argument(
        "--explain",
        type=Path,
        default=None,
        metavar="DIR",
        help="write a Grad-CAM overlay PNG per image into DIR (torch backend)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse images the input guard flags (not a chest X-ray, out of distribution)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for --images")
    from covidxray.prediction.ray_cli import add_engine_arguments

    add_engine_arguments(p)
    p.set_defaults(func=run_predict)


def _load(args: argparse.Namespace):
    from covidxray.bundle import ModelLoadError
    from covidxray.errors import EXIT_MODEL, CLIError
    from covidxray.prediction.predictor import load_predictor

    models = args.model or [None]
    backend = args.backend or ("onnx" if str(models[0] or "").endswith(".onnx") else "torch")
    try:
        return load_predictor(
            models if len(models) > 1 else models[0], backend=backend, strict=args.strict, tta=args.tta
        )
    except ModelLoadError as exc:
        raise CLIError(str(exc), EXIT_MODEL) from exc


def run_predict(args: argparse.Namespace) -> int:
    from covidxray.errors import EXIT_USAGE, CLIError

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}", EXIT_USAGE)
    if args.image and args.out:
        raise CLIError("--out goes with --images; for one image use --json and redirect", EXIT_USAGE)
    if args.images and args.json:
        raise CLIError("--json goes with --image; for --images write --out preds.jsonl", EXIT_USAGE)
    if args.explain and args.backend == "onnx":
        raise CLIError("--explain (Grad-CAM) needs the torch backend: drop --backend onnx", EXIT_USAGE)
    if args.engine != "local" and not (args.images or args.manifest):
        raise CLIError(f"--engine {args.engine} goes with --images or --manifest", EXIT_USAGE)
    if args.manifest and args.engine == "local":
        raise CLIError(
            "--manifest goes with --engine ray; locally, pass the folder with --images", EXIT_USAGE
        )
    if (args.resume or args.overwrite) and not args.out:
        raise CLIError("--resume and --overwrite go with --out FILE", EXIT_USAGE)
    if args.resume and args.overwrite:
        raise CLIError("--resume continues FILE, --overwrite replaces it: pass one of them", EXIT_USAGE)
    if args.engine == "local":
        _check_outputs(args)
    if args.images or args.manifest:
        return _predict_many(args)
    return _predict_one(args)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before the model loads: --out and --explain must be writable places (missing parent folders are made)."""
    from covidxray.errors import EXIT_USAGE, CLIError
    from covidxray.prediction.batch import OutputError, prepare_output

    try:
        if args.out:
            prepare_output(args.out, append=args.resume or args.overwrite)
        if args.explain:
            if args.explain.exists() and not args.explain.is_dir():
                raise OutputError(f"{args.explain}: --explain needs a folder, and this is a file")
            try:
                args.explain.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{args.explain}: cannot create this folder ({exc.strerror})") from exc
    except OutputError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from exc


def _predict_one(args: argparse.Namespace) -> int:
    import json

    from covidxray.about import NOT_FOR_CLINICAL_USE
    from covidxray.errors import EXIT_INPUT, EXIT_REFUSED, CLIError

    if not Path(args.image).is_file():  # before loading the model: a typo should fail fast
        what = "is a folder: use --images" if Path(args.image).is_dir() else "file does not exist"
        raise CLIError(f"{args.image}: {what}", EXIT_INPUT)
    predictor = _load(args)
    pred = predictor.predict(args.image)
    if pred.ok and args.explain:
        _write_explanation(predictor, args.image, args.explain, set())
    if args.json:
        out = pred.to_dict()
        out.update(
            model=predictor.version,
            tta=list(predictor.tta_views),
            ensemble=[m.backend.source for m in predictor.members] if len(predictor.members) > 1 else None,
            decision_rule=predictor.decision_rule(),
            not_for_clinical_use=NOT_FOR_CLINICAL_USE,
        )
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(_report_lines(pred, predictor)))
    if pred.error_reason == "refused":
        raise CLIError(pred.error or "refused by the input guard", EXIT_REFUSED)
    if pred.error:
        raise CLIError(pred.error, EXIT_INPUT)
    return 0


def _report_lines(pred, predictor) -> list[str]:
    from covidxray.about import NOT_FOR_CLINICAL_USE

    lines = [f"image: {pred.path}"]
    if pred.label is not None:
        lines.append(f"label: {pred.label}")
        width = max(len(c) for c in pred.probabilities)
        lines += [f"  p({c}){' ' * (width - len(c))} = {p:.4f}" for c, p in pred.probabilities.items()]
        if pred.decision:
            lines.append(f"decided by: {pred.decision['explanation']}")
        lines.append(f"decision: {predictor.decision_rule()}")
    else:
        lines.append("label: none")
    lines += [f"warning: {w}" for w in pred.warnings]
    lines.append(f"model: {predictor.version} ({predictor.backend.name})")
    if predictor.options:
        lines.append(f"averaged: {predictor.options}")
    lines.append(NOT_FOR_CLINICAL_USE)
    return lines


def _predict_many(args: argparse.Namespace) -> int:
    from covidxray.about import NOT_FOR_CLINICAL_USE
    from covidxray.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_USAGE, CLIError
    from covidxray.imageio import ImageLoadError
    from covidxray.prediction.batch import (
        BatchSummary,
        OutputError,
        RowWriter,
        read_done,
        resume_command,
        scan_images,
        stream_rows,
    )

    if args.engine == "ray":
        from covidxray.prediction.ray_cli import run_predict_ray

        return run_predict_ray(args, _input_paths(args))
    try:
        scan = scan_images(args.images)
    except ImageLoadError as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    predictor = _load(args)
    out = args.out
    jsonl = bool(out and out.suffix.lower() == ".jsonl")
    paths = scan.paths
    done: set[str] = set()
    if out and args.resume:
        try:
            done = read_done(out, predictor.classes, jsonl)
        except OutputError as exc:
            raise CLIError(str(exc), EXIT_USAGE) from exc
        paths = [p for p in paths if p not in done]
    append = bool(out and args.resume and out.exists() and out.stat().st_size > 0)
    stream = open(out, "a" if append else "w", newline="", encoding="utf-8") if out else sys.stdout  # noqa: SIM115
    summary = BatchSummary()
    explained: set[str] = set()
    interrupted = False
    try:
        # a file is flushed row by row: an interrupted or killed run loses at most the row being written
        writer = RowWriter(
            stream, predictor.classes, jsonl=jsonl, header=not append, flush_every=1 if out else 256
        )
        preds = stream_rows(predictor.iter_predict(paths, batch_size=args.batch_size), writer, summary)
        with closing(preds):  # its Ctrl-C handler is restored even if an explanation fails
            for pred in _progress(preds, len(paths), disable=args.no_progress):
                if args.explain and pred.ok:
                    _write_explanation(predictor, pred.path, args.explain, explained)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if out:
            stream.close()
        else:
            stream.flush()
    lines = summary.lines()
    if done:
        lines.append(f"{len(scan.paths) - len(paths)} images already in {out} were skipped (--resume)")
    lines += scan.lines()
    lines.append(f"decision: {predictor.decision_rule()}")
    lines.append(f"model: {predictor.version} ({predictor.backend.name})")
    if predictor.options:
        lines.append(f"averaged: {predictor.options}")
    if out:
        lines.append(f"wrote {summary.total} rows to {out}" + (" (appended)" if append else ""))
    if interrupted:
        left = len(paths) - summary.total
        lines.append(f"interrupted: {summary.total} of {len(paths)} images done, {left} left")
        if out:
            lines.append(f"resume with: {resume_command(args)}")
        else:
            lines.append("to be able to resume, write to a file: --out preds.csv, then --resume")
    print("\n".join([*lines, NOT_FOR_CLINICAL_USE]), file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    if summary.predicted == 0 and summary.refused == 0 and (summary.total or not done):
        raise CLIError(f"none of the {summary.total} images could be read", EXIT_INPUT)
    return 0


def _input_paths(args: argparse.Namespace) -> list[str]:
    """The images of --images (folder, glob, or with --engine ray a URI) or of --manifest, in order."""
    from covidxray.errors import EXIT_INPUT, EXIT_USAGE, CLIError
    from covidxray.imageio import ImageLoadError
    from covidxray.prediction.batch import find_images

    try:
        if args.manifest:
            if not args.manifest.is_file():
                raise CLIError(
                    f"{args.manifest}: manifest not found; build one with 'covidxray data build'", EXIT_INPUT
                )
            from covidxray.prediction.batch import manifest_image_paths

            try:
                return manifest_image_paths(args.manifest)
            except (OSError, ValueError, KeyError) as exc:
                raise CLIError(f"{args.manifest}: cannot read the manifest ({exc})", EXIT_INPUT) from exc
        if "://" in args.images:
            if args.engine != "ray":
                raise CLIError(f"{args.images}: URIs are read with --engine ray", EXIT_USAGE)
            from covidxray.prediction.ray_engine import list_uri_images

            return list_uri_images(args.images)
        return find_images(args.images)
    except ImageLoadError as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc


def _progress(items, total: int, disable: bool):
    if disable or total < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit="img", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def _write_explanation(predictor, path: str, out_dir: Path, used: set[str]) -> Path:
    """``<stem>_gradcam.png`` in ``out_dir`` (``<stem>_gradcam-2.png``, ... when stems repeat in a batch)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(path).stem
    name, k = f"{stem}_gradcam.png", 1
    while name in used:
        k += 1
        name = f"{stem}_gradcam-{k}.png"
    used.add(name)
    target = out_dir / name
    target.write_bytes(predictor.explain(path))
    return target


# -- export ------------------------------------------------------------------------------------------------------
def _register_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model bundle to ONNX",
        description="Write an ONNX file (dynamic batch) whose metadata holds the classes, preprocessing, operating "
        "point and input guard, so ONNX Runtime can use it without covidxray or torch. Checks that ONNX Runtime "
        "agrees with PyTorch to 1e-4.",
    )
    p.add_argument("--model", required=True, metavar="RUN", help="run folder or bundle folder")
    p.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="FILE",
        help="output file (default: model.onnx in the bundle folder)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from covidxray.about import NOT_FOR_CLINICAL_USE
    from covidxray.bundle import ModelLoadError, resolve_model_path
    from covidxray.errors import EXIT_MODEL, CLIError
    from covidxray.prediction.export import DEFAULT_OPSET, export_onnx

    try:
        bundle = resolve_model_path(args.model, "torch")
        out = args.onnx or bundle / ONNX_FILE
        facts = export_onnx(bundle, out, opset=args.opset or DEFAULT_OPSET)
    except ModelLoadError as exc:
        raise CLIError(str(exc), EXIT_MODEL) from exc
    print(
        f"wrote {facts['path']} ({facts['bytes'] / 1e6:.1f} MB, opset {facts['opset']}, model {facts['version']}); "
        f"ONNX Runtime vs PyTorch max |dp| = {facts['max_abs_diff']:.1e}"
    )
    print(NOT_FOR_CLINICAL_USE)
    return 0


# -- guard -------------------------------------------------------------------------------------------------------
def _register_guard(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "guard",
        help="fit the input guard's feature-distance threshold on training images",
        description="Fit the distance-to-training-data part of the input guard on a manifest split (from the "
        "preprocessed cache) and store it in the bundle's config.json; re-exports model.onnx if the bundle has one.",
    )
    p.add_argument("--model", required=True, metavar="RUN", help="run folder or bundle folder")
    p.add_argument("--manifest", required=True, type=Path, help="manifest CSV the model was trained on")
    p.add_argument("--split", default="train", help="manifest split to fit on (default: %(default)s)")
    p.add_argument(
        "--cache-dir", type=Path, default=Path("runs/cache"), help="image cache (default: %(default)s)"
    )
    p.add_argument(
        "--quantile",
        type=float,
        default=0.99,
        help="threshold = this quantile of held-out training distances (default: %(default)s)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=3000,
        help="fit on at most this many images, a seeded random sample (default: %(default)s)",
    )
    p.set_defaults(func=run_guard)


def run_guard(args: argparse.Namespace) -> int:
    from covidxray.bundle import ModelLoadError, resolve_model_path
    from covidxray.errors import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE, CLIError
    from covidxray.prediction.guard import fit_guard_on_split, guard_summary

    if not 0.5 <= args.quantile < 1:
        raise CLIError(f"--quantile must be in [0.5, 1), got {args.quantile}", EXIT_USAGE)
    try:
        bundle = resolve_model_path(args.model, "torch")
    except ModelLoadError as exc:
        raise CLIError(str(exc), EXIT_MODEL) from exc
    if not args.manifest.is_file():
        raise CLIError(
            f"{args.manifest}: manifest not found; build one with 'covidxray data build'", EXIT_INPUT
        )
    from covidxray.data.manifest import read_manifest

    try:
        guard = fit_guard_on_split(
            bundle, read_manifest(args.manifest), args.cache_dir, args.split, args.quantile, args.max_images
        )
    except ValueError as exc:
        raise CLIError(f"{args.manifest}: {exc}", EXIT_INPUT) from exc
    print(f"{guard_summary(guard, args.split)}, stored in {bundle / 'config.json'}")
    if (bundle / ONNX_FILE).exists():
        print(f"re-exported {bundle / ONNX_FILE} with the guard in its metadata")
    return 0
