"""``covidxray data build | summary | credits | cache``: the manifest and the preprocessed-image cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from covidxray.errors import EXIT_INPUT, EXIT_USAGE, CLIError

DEFAULT_MANIFEST = "runs/data/manifest.csv"


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=LAYOUT, got {text!r}")
    return name, value


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="build and inspect the image manifest", description=__doc__)
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="scan the collections under a data root and write the manifest")
    b.add_argument("--root", default="../shared/data", help="data root (default: %(default)s)")
    b.add_argument("--out", default=DEFAULT_MANIFEST, help="manifest CSV to write (default: %(default)s)")
    b.add_argument(
        "--views",
        type=_csv_list,
        help="views to keep, comma-separated (default: frontal: PA,AP,AP Supine,AP Erect)",
    )
    b.add_argument(
        "--labels",
        type=_csv_list,
        help="labels to keep, comma-separated: covid,normal,pneumonia (default: all)",
    )
    b.add_argument("--sources", type=_csv_list, help="sources to read, comma-separated (default: all found)")
    b.add_argument(
        "--holdout-source", metavar="NAME", help="put this whole source in test (cross-source evaluation)"
    )
    b.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    b.add_argument(
        "--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST")
    )
    b.add_argument("--balance", action="store_true", help="equal image counts per label within each split")
    b.add_argument(
        "--layout",
        type=_name_value,
        action="append",
        default=[],
        metavar="NAME=LAYOUT",
        help="force the layout of a collection folder (cohen, kermany, radiography, folder, covidx)",
    )
    b.add_argument(
        "--label-map", metavar="FILE", help="class folder -> label map (YAML/JSON or CSV folder,label)"
    )
    b.add_argument("--workers", type=int, default=2, help="processes opening images (default: %(default)s)")
    b.add_argument("--no-reuse", action="store_true", help="re-open every image (ignore fingerprints.csv)")
    b.set_defaults(func=_build)

    s = sub.add_parser("summary", help="counts by source x label x split, rejects and duplicate groups")
    s.add_argument("manifest", nargs="?", default=DEFAULT_MANIFEST)
    s.set_defaults(func=_summary)

    c = sub.add_parser("credits", help="where the images come from: citations, URLs and licences")
    c.add_argument("manifest", nargs="?", default=DEFAULT_MANIFEST)
    c.set_defaults(func=_credits)

    k = sub.add_parser("cache", help="decode and preprocess every manifest image once into the cache")
    k.add_argument("manifest", nargs="?", default=DEFAULT_MANIFEST)
    k.add_argument("--image-size", type=int, default=224, help="square side in pixels (default: %(default)s)")
    k.add_argument("--cache-dir", default="runs/cache", help="cache folder (default: %(default)s)")
    k.add_argument("--workers", type=int, default=2, help="processes decoding images (default: %(default)s)")
    k.set_defaults(func=_cache)


def _build(args: argparse.Namespace) -> int:
    from covidxray.data.manifest import build_manifest
    from covidxray.data.sources.folder import read_label_map
    from covidxray.data.summary import format_summary

    if args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}", EXIT_USAGE)
    if args.labels and set(args.labels) - {"covid", "normal", "pneumonia"}:
        raise CLIError(f"--labels takes covid, normal, pneumonia; got {','.join(args.labels)}", EXIT_USAGE)
    try:
        label_map = read_label_map(args.label_map) if args.label_map else None
        out = build_manifest(
            args.root, args.out, views=args.views, labels=args.labels, holdout_source=args.holdout_source,
            seed=args.seed, fractions=tuple(args.fractions), balance=args.balance, workers=args.workers,
            layouts=dict(args.layout), label_map=label_map, sources=args.sources,
            reuse_fingerprints=not args.no_reuse, progress=sys.stderr.isatty(),
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    print(format_summary(out))
    return 0


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{p}: manifest not found; build one with 'covidxray data build'", EXIT_INPUT)
    return p


def _summary(args: argparse.Namespace) -> int:
    from covidxray.data.summary import format_summary

    try:
        print(format_summary(_existing(args.manifest)))
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    return 0


def _credits(args: argparse.Namespace) -> int:
    from covidxray.data.credits import format_credits
    from covidxray.data.manifest import read_manifest

    try:
        print(format_credits(read_manifest(_existing(args.manifest))))
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    return 0


def _cache(args: argparse.Namespace) -> int:
    from covidxray.data.cache import cache_path, load_cache
    from covidxray.data.manifest import read_manifest
    from covidxray.imageio import ImageLoadError
    from covidxray.preprocess import Preprocessing

    try:
        df = read_manifest(_existing(args.manifest))
        pre = Preprocessing(image_size=args.image_size)
        arr = load_cache(df, pre, args.cache_dir, workers=args.workers, progress=sys.stderr.isatty())
    except (ValueError, ImageLoadError) as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    print(
        f"cache {cache_path(df, pre, args.cache_dir)}: {arr.shape[0]} images of {arr.shape[1]}x{arr.shape[2]} uint8"
    )
    return 0
