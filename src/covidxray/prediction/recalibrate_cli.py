"""``covidxray recalibrate``: a model's decision re-tuned on a site's own labelled images (new bundle + ONNX)."""

from __future__ import annotations

import argparse
from pathlib import Path

from covidxray.about import NOT_FOR_CLINICAL_USE
from covidxray.errors import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE, CLIError


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "recalibrate",
        help="re-tune the decision threshold on a hospital's own labelled X-rays (new bundle + ONNX)",
        description=(
            "Choose the COVID-19 operating points on SPLIT of a site's manifest (screening: sensitivity >= 0.95, "
            "balanced: max min(sensitivity, specificity), or a site point for --target-sensitivity / "
            "--target-specificity), optionally re-fit temperature scaling there, and write OUT as a complete "
            "bundle + model.onnx that records the site, the images used, the thresholds with bootstrap intervals "
            "and the parent model. Weights are unchanged. With test rows in the manifest, recalibration.md "
            f"compares the decision before and after. {NOT_FOR_CLINICAL_USE}"
        ),
    )
    p.add_argument("--model", default=None, help="bundle or run folder (default: the shipped model)")
    p.add_argument("--manifest", required=True, type=Path, help="the site's manifest (covidxray data build)")
    p.add_argument("--split", default="train", help="rows to re-tune on (default: %(default)s)")
    p.add_argument("--test-split", default="test", help="rows for before/after (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="folder for the new bundle")
    p.add_argument(
        "--site", default=None, help="site name recorded in the bundle (default: the manifest's source)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--target-sensitivity", type=_fraction, help="decide with the highest threshold reaching it"
    )
    g.add_argument("--target-specificity", type=_fraction, help="decide with the lowest threshold keeping it")
    p.add_argument(
        "--decision",
        choices=("screening", "balanced", "site"),
        help="the point that decides (default: site with a target, else the model's own deciding point's name)",
    )
    p.add_argument("--temperature", action="store_true", help="re-fit temperature scaling on the same images")
    p.add_argument(
        "--cache-dir", type=Path, default=Path("runs/cache"), help="image cache (default: %(default)s)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default: 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument(
        "--curve-sizes",
        type=int,
        nargs="+",
        default=[25, 50, 100, 200, 400],
        metavar="N",
        help="numbers of site images for the how-many-images curve (default: 25 50 100 200 400)",
    )
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.set_defaults(func=_recalibrate)


def _recalibrate(args: argparse.Namespace) -> int:
    from covidxray.bundle import BundleError, ModelLoadError
    from covidxray.evaluation.cli import read_manifest_or_fail
    from covidxray.prediction.recalibrate import RECALIBRATION_FILE, REPORT_STEM, format_rate, recalibrate

    if args.bootstrap < 10:
        raise CLIError(f"--bootstrap must be at least 10, got {args.bootstrap}", EXIT_USAGE)
    df = read_manifest_or_fail(args.manifest)
    try:
        result = recalibrate(
            args.model, df, args.out, split=args.split, site=args.site,
            target_sensitivity=args.target_sensitivity, target_specificity=args.target_specificity,
            temperature=args.temperature, cache_dir=args.cache_dir, n_resamples=args.bootstrap, seed=args.seed,
            manifest_path=args.manifest, test_split=args.test_split, onnx=not args.no_onnx, decision=args.decision,
            curve_sizes=tuple(args.curve_sizes),
        )  # fmt: skip
    except (ModelLoadError, BundleError) as exc:
        raise CLIError(str(exc), EXIT_MODEL) from exc
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    prov = result["recalibration"]
    lines = [
        f"recalibrated {prov['parent']['version']} for site '{prov['site']}' on {prov['n_images']} images "
        f"({prov['n_positive']} COVID-19, {prov['n_negative']} non-COVID); decision: {prov['decision']}"
    ]
    for name, pt in result["operating_points"].items():
        lo_hi = pt.get("threshold_ci")
        ci = f" [{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]" if lo_hi else ""
        lines.append(f"  {name:<10} p(covid) >= {pt['threshold']:.4f}{ci} ({pt['rule']})")
    test = result.get("test")
    if test:
        for when in ("before", "after"):
            r = test.get(when)
            if r:
                lines.append(
                    f"  {when:<6} on {test['n_images']} '{test['split']}' images ({r['point']}, p >= "
                    f"{r['threshold']:.4f}): sensitivity {format_rate(r['sensitivity'])}, "
                    f"specificity {format_rate(r['specificity'])}"
                )
    out = Path(args.out)
    lines.append(
        f"wrote {out} (bundle + model.onnx), {out / RECALIBRATION_FILE}, {out / (REPORT_STEM + '.md')}"
    )
    lines.append(NOT_FOR_CLINICAL_USE)
    print("\n".join(lines))
    return 0
