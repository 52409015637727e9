"""``covidxray segment``: lung-field masks for chest X-rays, and ``covidxray segment train``.

Contract (scripts depend on it):

- ``covidxray segment --images DIR --out DIR`` writes one ``<input file stem>.png`` per input image (0/255, the
  same width and height as the input; ``<stem>-2.png``, ... when stems repeat in a recursive folder) and
  ``lungs.csv``: path, mask, width, height, area_fraction, components, balance, quality, error.
- ``covidxray segment --image X [--overlay out.png] [--mask out.png]`` prints the lung facts.

Bad files are reported as ``predict`` reports them: a row with an ``error`` that does not stop the run; exit 3
when not one image could be read (or the single ``--image`` cannot be), 5 when the segmenter cannot be loaded.
A folder that already holds a ``lungs.csv`` is not overwritten silently: ``--resume`` continues it (the images
already in it are skipped, their mask names kept), ``--overwrite`` replaces it. Ctrl-C stops at the end of the
batch being segmented: every row in ``lungs.csv`` has its mask, the summary counts exactly those rows, the command
that resumes is printed, exit 130. The file is flushed batch by batch, so a killed run loses at most one batch.
The ONNX backend (default) does not import torch.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

CSV_NAME = "lungs.csv"
CSV_COLUMNS = [
    "path",
    "mask",
    "width",
    "height",
    "area_fraction",
    "components",
    "balance",
    "quality",
    "error",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="lung-field masks (SCR convention: heart excluded) for one image or a folder",
        description="Segment the lung fields of chest X-rays with the shipped U-Net (or --segmenter). Masks are "
        "0/255 PNGs the size of the input; lungs.csv gives the lung area fraction, the number of components, the "
        "left/right balance and a quality flag (ok, no_lungs, small, large, one_component, unbalanced). "
        "'covidxray segment train' retrains the segmenter. Exit codes: 0 ok, 2 usage, 3 bad input, 5 segmenter "
        "not loadable. Research use only, not for clinical diagnosis.",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--image", metavar="PATH", help="one image file")
    what.add_argument("--images", metavar="DIR|GLOB", help="a folder (searched recursively) or a quoted glob")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="with --images: folder for <stem>.png masks + lungs.csv"
    )
    p.add_argument(
        "--overlay", type=Path, metavar="PNG", help="with --image: the X-ray with the lung outline"
    )
    p.add_argument("--mask", type=Path, metavar="PNG", help="with --image: write the 0/255 mask here")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help=f"with --images: continue --out's {CSV_NAME}, skipping its images",
    )
    again.add_argument(
        "--overwrite", action="store_true", help=f"with --images: replace --out's {CSV_NAME} if it exists"
    )
    p.add_argument(
        "--segmenter", metavar="DIR|ONNX", default=None, help="segmenter folder or .onnx (default: shipped)"
    )
    p.add_argument(
        "--backend", choices=("onnx", "torch"), default="onnx", help="default: %(default)s (no torch)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default: %(default)s)")
    p.set_defaults(func=run_segment, segment_parser=p)
    sub = p.add_subparsers(dest="segment_command", metavar="train")
    _register_train(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    from covidxray.segmentation.train_config import SegTrainConfig

    d = SegTrainConfig()
    t = sub.add_parser(
        "train",
        help="train the lung segmenter from scratch on JSRT + the V7 lung masks",
        description="Train the U-Net lung segmenter (patient-disjoint train/val/test, Dice per source on the "
        "held-out masks) and write model.safetensors, config.json, model.onnx and history.csv into --out.",
    )
    t.add_argument(
        "--root", default=d.root, help="data root with JSRT/ and lung-masks/ (default: %(default)s)"
    )
    t.add_argument("--out", default=d.out, help="output folder (default: %(default)s)")
    t.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    t.add_argument(
        "--image-size", type=int, default=d.image_size, help="network input size (default: %(default)s)"
    )
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    t.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    t.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    t.add_argument("--threads", type=int, default=d.threads, help="torch threads (default: %(default)s)")
    t.add_argument(
        "--max-images", type=int, default=0, help="at most this many pairs per source (quick runs)"
    )
    t.set_defaults(func=run_train)


def _fail(message: str, code_name: str):
    from covidxray import errors

    return errors.CLIError(message, getattr(errors, code_name))


def _load(args: argparse.Namespace):
    from covidxray.segmentation.segmenter import SegmenterLoadError, load_segmenter

    try:
        return load_segmenter(args.segmenter, backend=args.backend, threads=args.threads)
    except SegmenterLoadError as exc:
        raise _fail(str(exc), "EXIT_MODEL") from exc


def run_segment(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise _fail(f"--batch-size must be at least 1, got {args.batch_size}", "EXIT_USAGE")
    if args.images:
        if args.out is None:
            raise _fail("--images needs --out DIR (the masks and lungs.csv go there)", "EXIT_USAGE")
        if args.overlay or args.mask:
            raise _fail("--overlay and --mask go with --image", "EXIT_USAGE")
        return _segment_many(args)
    if args.image:
        if args.out is not None:
            raise _fail("--out goes with --images; for one image use --mask FILE", "EXIT_USAGE")
        if args.resume or args.overwrite:
            raise _fail("--resume and --overwrite go with --images DIR --out DIR", "EXIT_USAGE")
        return _segment_one(args)
    args.segment_parser.print_usage(sys.stderr)
    raise _fail("give --image PATH or --images DIR --out DIR (or 'covidxray segment train')", "EXIT_USAGE")


def _segment_one(args: argparse.Namespace) -> int:
    from covidxray.about import NOT_FOR_CLINICAL_USE
    from covidxray.imageio import ImageLoadError, load_image

    if not Path(args.image).is_file():
        what = "is a folder: use --images" if Path(args.image).is_dir() else "file does not exist"
        raise _fail(f"{args.image}: {what}", "EXIT_INPUT")
    try:
        image = load_image(args.image)
    except ImageLoadError as exc:
        raise _fail(str(exc), "EXIT_INPUT") from exc
    seg = _load(args).segment(image)
    f = seg.facts
    if args.mask:
        _write_png(args.mask, seg.png_array())
    if args.overlay:
        from covidxray.segmentation.overlay import lung_overlay

        _write_png(args.overlay, lung_overlay(image.pixels, seg.mask))
    lines = [
        f"image: {args.image} ({image.width}x{image.height})",
        f"lung area fraction: {f.area_fraction:.4f}",
        f"components: {f.components}",
        f"left/right balance: {f.balance:.3f}",
        f"quality: {f.quality}",
    ]
    lines += [f"wrote {p}" for p in (args.mask, args.overlay) if p]
    print("\n".join([*lines, NOT_FOR_CLINICAL_USE]))
    return 0


def _write_png(path: Path, array) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _segment_many(args: argparse.Namespace) -> int:
    from collections import Counter

    from covidxray.about import NOT_FOR_CLINICAL_USE
    from covidxray.errors import EXIT_INTERRUPTED
    from covidxray.imageio import ImageLoadError, load_image
    from covidxray.prediction.batch import find_images, interrupts_between_rows, resume_command

    try:
        paths = find_images(args.images)
    except ImageLoadError as exc:
        raise _fail(str(exc), "EXIT_INPUT") from exc
    if args.out.exists() and not args.out.is_dir():
        raise _fail(f"{args.out}: exists and is not a folder", "EXIT_USAGE")
    table = args.out / CSV_NAME
    exists = table.is_file() and table.stat().st_size > 0
    if exists and not (args.resume or args.overwrite):
        raise _fail(
            f"{table} exists: pass --resume to continue it (its images are skipped) or --overwrite to replace it",
            "EXIT_USAGE",
        )
    done, used = _read_done(table) if exists and args.resume else ({}, set())
    # continued only if something is left once _read_done has cut a half-written line
    append = exists and args.resume and table.stat().st_size > 0
    todo = [p for p in paths if p not in done]
    segmenter = _load(args)
    args.out.mkdir(parents=True, exist_ok=True)
    quality: Counter = Counter()
    errors: Counter = Counter()
    written = 0
    interrupted = False
    with open(table, "a" if append else "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        if not append:
            writer.writeheader()
        try:
            # a first Ctrl-C is held to the end of the batch: its masks and rows are written together
            with interrupts_between_rows() as pressed:
                for start in range(0, len(todo), args.batch_size):
                    if pressed():
                        raise KeyboardInterrupt
                    batch = todo[start : start + args.batch_size]
                    rows, batch_quality, batch_errors = _segment_batch(
                        segmenter, batch, args.out, used, load_image
                    )
                    writer.writerows(rows)
                    fh.flush()
                    # counted once written: a second Ctrl-C inside a batch leaves it out of the table and the summary
                    written += len(rows)
                    quality.update(batch_quality)
                    errors.update(batch_errors)
        except KeyboardInterrupt:
            interrupted = True
    done_now = sum(quality.values())
    lines = [
        f"{written} images: {done_now} segmented ("
        + ", ".join(f"{k} {v}" for k, v in sorted(quality.items()))
        + ")"
    ]
    if errors:
        lines.append(
            f"{sum(errors.values())} could not be read ("
            + ", ".join(f"{k} {v}" for k, v in sorted(errors.items()))
            + ")"
        )
    skipped = len(paths) - len(todo)
    if skipped:
        lines.append(f"{skipped} images already in {table} were skipped (--resume)")
    lines.append(f"wrote {done_now} masks and {written} rows to {table}" + (" (appended)" if append else ""))
    if interrupted:
        lines.append(f"interrupted: {written} of {len(todo)} images done, {len(todo) - written} left")
        lines.append(f"resume with: {resume_command(args)}")
    print("\n".join([*lines, NOT_FOR_CLINICAL_USE]), file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    if done_now == 0 and todo and not used:  # on --resume, the masks already written count
        raise _fail(f"none of the {len(todo)} images could be read", "EXIT_INPUT")
    return 0


def _segment_batch(segmenter, batch, out: Path, used: set[str], load_image):
    """Segment one batch of paths: write each mask; return the rows (errors as rows) in input order and the
    batch's counts of quality flags and of read errors by reason."""
    from collections import Counter

    from covidxray.imageio import ImageLoadError

    quality: Counter = Counter()
    errors: Counter = Counter()
    loaded, rows = [], []
    for path in batch:
        row = dict.fromkeys(CSV_COLUMNS, "")
        row["path"] = path
        try:
            loaded.append((load_image(path), row))
        except ImageLoadError as exc:
            row["error"] = str(exc)
            errors[exc.reason] += 1
        rows.append(row)
    segs = segmenter.segment_many([im for im, _ in loaded]) if loaded else []
    for (image, row), seg in zip(loaded, segs, strict=True):
        name = _unique_name(Path(row["path"]).stem, used)
        _write_png(out / name, seg.png_array())
        f = seg.facts
        row.update(
            mask=name,
            width=image.width,
            height=image.height,
            area_fraction=f.area_fraction,
            components=f.components,
            balance=f.balance,
            quality=f.quality,
        )
        quality[f.quality] += 1
    return rows, quality, errors


def _read_done(table: Path) -> tuple[dict[str, str], set[str]]:
    """The rows of a ``lungs.csv`` that ``--resume`` continues: path -> mask name, and the mask names in use.

    An incomplete last line (a killed run) is cut so that image is segmented again.
    """
    from covidxray.prediction.batch import drop_partial_last_line

    drop_partial_last_line(table)
    if table.stat().st_size == 0:  # killed while writing the header: start afresh
        return {}, set()
    with open(table, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != CSV_COLUMNS:
            raise _fail(
                f"{table}: its columns {reader.fieldnames} are not those of 'covidxray segment' ({CSV_COLUMNS}); "
                "cannot resume it: write to another --out folder or pass --overwrite",
                "EXIT_USAGE",
            )
        done = {r["path"]: r["mask"] for r in reader}
    return done, {m for m in done.values() if m}


def _unique_name(stem: str, used: set[str]) -> str:
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.png"
    used.add(name)
    return name


def run_train(args: argparse.Namespace) -> int:
    from covidxray.segmentation.train_config import SegTrainConfig

    if not (Path(args.root) / "JSRT").is_dir() and not (Path(args.root) / "lung-masks").is_dir():
        raise _fail(f"{args.root}: no JSRT/ or lung-masks/ folder here; pass --root DATA", "EXIT_INPUT")
    cfg = SegTrainConfig(
        root=args.root,
        out=args.out,
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        max_images=args.max_images,
    )
    from covidxray.segmentation.train import train_segmenter

    config = train_segmenter(cfg)
    test = config["metrics"]["test"]
    for src, m in test.items():
        key = "lungs" if "lungs" in m else "lungs_behind_heart"
        print(f"test Dice {src}: {m[key]['mean']:.4f} ({key}, {m['n_images']} images)")
    print(f"wrote {args.out} ({config['version']})")
    return 0
