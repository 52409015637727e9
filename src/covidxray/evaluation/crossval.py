"""``covidxray crossval``: leave-one-source-out training and evaluation.

For each held-out source the model is trained on the other sources minus their copies of the held-out source's
images (``TrainConfig(holdout_source=SOURCE)``),
then evaluated twice with the same operating point (chosen on the in-source validation rows):

- *in-source*: the test split of the sources it was trained on -- what a random split reports;
- *out-of-source*: every row of the held-out source -- X-rays from a collection the model never saw.

The gap between the two is the headline of the audits this project follows (DeGrave et al. 2021; Roberts et al.
2021). A held-out source may lack a label (e.g. no COVID in a pneumonia collection): its per-class AUC is then
undefined and the out-of-source macro AUC averages over the classes present, which the table says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidxray.evaluation.document import Report
from covidxray.evaluation.metrics_json import EvaluationOptions
from covidxray.evaluation.metrics_report import cell

if TYPE_CHECKING:
    import pandas as pd

RESULT_FILE = "crossval.json"
IN_DIR, OUT_DIR = "evaluation-in-source", "evaluation-out-of-source"
HEADLINE_CLASS = "covid"


def fold_dir(out_dir: str | Path, source: str) -> Path:
    """The run folder of the fold that holds ``source`` out."""
    return Path(out_dir) / ("holdout-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", source) or "source"))


def _auc(metrics: dict[str, Any], cls: str | None) -> dict[str, Any]:
    g = metrics["overall"]
    if cls is None:
        return g["macro"]["roc_auc"]
    if cls not in g["per_class"]:
        return {"value": None, "ci": None, "reason": f"the model has no class '{cls}'"}
    return g["per_class"][cls]["roc_auc"]


def fold_summary(source: str, in_source: dict[str, Any], out_of_source: dict[str, Any]) -> dict[str, Any]:
    """One row of the table: in-source vs out-of-source ROC AUC (macro, per class), with intervals and notes."""
    classes = list(in_source["overall"]["per_class"])
    out_g = out_of_source["overall"]
    missing = [c for c in classes if out_g["per_class"][c]["roc_auc"]["value"] is None]
    notes = []
    if missing:
        present = [c for c in classes if c not in missing]
        why = ", ".join(
            f"{c} ({out_g['per_class'][c]['roc_auc'].get('reason', 'undefined')})" for c in missing
        )
        notes.append(
            f"{source}: out-of-source AUC undefined for {why}; its macro AUC averages "
            f"{', '.join(present) or 'no class'} only, the in-source one all of {', '.join(classes)}"
        )
    return {
        "held_out_source": source,
        "n_images_out": out_g["n_images"],
        "n_patients_out": out_g["n_patients"],
        "label_counts_out": out_g["label_counts"],
        "n_images_in": in_source["overall"]["n_images"],
        "in_source_sources": list(in_source["data"]["sources"]),
        "macro_roc_auc": {"in_source": _auc(in_source, None), "out_of_source": _auc(out_of_source, None)},
        "roc_auc": {
            c: {"in_source": _auc(in_source, c), "out_of_source": _auc(out_of_source, c)} for c in classes
        },
        "notes": notes,
        # out of source on adults alone (children: covidxray.data.population); None when the held-out rows hold no
        # child (the overall figures are the adults') or nothing but children
        "roc_auc_out_adults": (
            {c: out_of_source["adults"]["group"]["per_class"][c]["roc_auc"] for c in classes}
            if out_of_source.get("adults")
            else None
        ),
    }


def _adults_cell(fold: dict[str, Any], cls: str) -> str:
    adults = fold.get("roc_auc_out_adults")
    if adults is None:
        return "n/a (the held-out images hold no child, or nothing but children)"
    return cell(adults.get(cls))


def crossval_report(result: dict[str, Any]) -> Report:
    """The leave-one-source-out table as a report (markdown + self-contained HTML)."""
    folds = result["folds"]
    report = Report(f"Leave-one-source-out evaluation of {result['model']}")
    report.paragraph(
        "Each row: a model trained on every other source, evaluated on the test split of the sources it was "
        "trained on (in-source) and on all images of the held-out source (out-of-source). ROC AUC with 95% "
        "intervals from a bootstrap over patients."
    )
    if result.get("command"):
        report.paragraph(f"Command: {result['command']}")
    h = HEADLINE_CLASS
    report.table(
        [
            "held-out source",
            "out-of-source images",
            "macro AUC in-source",
            "macro AUC out-of-source",
            f"{h} AUC in-source",
            f"{h} AUC out-of-source",
            f"{h} AUC out-of-source, adults only",
        ],
        [
            [
                f["held_out_source"],
                f["n_images_out"],
                cell(f["macro_roc_auc"]["in_source"]),
                cell(f["macro_roc_auc"]["out_of_source"]),
                cell(f["roc_auc"].get(h, {}).get("in_source")),
                cell(f["roc_auc"].get(h, {}).get("out_of_source")),
                _adults_cell(f, h),
            ]
            for f in folds
        ],
    )
    for f in folds:
        for n in f["notes"]:
            report.paragraph(f"Note: {n}.")
    report.heading("Per class", 2)
    classes = sorted({c for f in folds for c in f["roc_auc"]})
    report.table(
        ["held-out source", "class", "ROC AUC in-source", "ROC AUC out-of-source"],
        [
            [
                f["held_out_source"],
                c,
                cell(f["roc_auc"][c]["in_source"]),
                cell(f["roc_auc"][c]["out_of_source"]),
            ]
            for f in folds
            for c in classes
            if c in f["roc_auc"]
        ],
    )
    report.paragraph(
        "Full reports per fold: "
        + "; ".join(
            f"{f['held_out_source']}: {f['run_dir']}/{IN_DIR}/report.html, {f['run_dir']}/{OUT_DIR}/report.html"
            for f in folds
        )
    )
    return report


def evaluate_fold(
    bundle: Path,
    df: pd.DataFrame,
    source: str,
    run_dir: Path,
    cache_dir: str | Path,
    options: EvaluationOptions,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """In-source (test split of the other sources) and out-of-source (all rows of ``source``) metrics.

    Both use the operating point chosen on the other sources' validation rows.
    """
    from covidxray.evaluation.evaluate import evaluate

    held = df["source"].astype(str) == source
    val_rows = ~held & (df["split"].astype(str) == options.val_split)
    in_opts = EvaluationOptions(**{**asdict(options), "split": "test"})
    out_opts = EvaluationOptions(**{**asdict(options), "split": "all", "store_operating_point": False})
    in_m = evaluate(bundle, df, run_dir / IN_DIR, cache_dir, in_opts, rows=~held, val_rows=val_rows)
    out_m = evaluate(bundle, df, run_dir / OUT_DIR, cache_dir, out_opts, rows=held, val_rows=val_rows)
    return in_m, out_m


def run_fold(
    manifest: str | Path,
    model: str,
    source: str,
    out_dir: str | Path,
    train_options: dict[str, Any] | None = None,
    options: EvaluationOptions | None = None,
    cache_dir: str | Path = "runs/cache",
    retrain: bool = False,
    manifest_df: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """One fold: train ``model`` without ``source`` (unless its run exists and not ``retrain``), evaluate it in
    and out of source; returns the fold's row of the table. A trial of its own (``crossval --engine ray``)."""
    from covidxray.data.manifest import read_manifest
    from covidxray.training.config import TrainConfig
    from covidxray.training.trainer import train

    df = manifest_df if manifest_df is not None else read_manifest(manifest)
    run_dir = fold_dir(out_dir, source)
    if retrain or not ((run_dir / "run.json").is_file() and (run_dir / "model" / "config.json").is_file()):
        cfg = TrainConfig(
            manifest=str(manifest),
            model=model,
            out=str(run_dir),
            holdout_source=source,
            cache_dir=str(cache_dir),
            **(train_options or {}),
        )
        run_dir = Path(train(cfg, manifest_df=df))
    in_m, out_m = evaluate_fold(
        run_dir / "model", df, source, run_dir, cache_dir, options or EvaluationOptions()
    )
    fold = fold_summary(source, in_m, out_m)
    fold["run_dir"] = str(run_dir)
    return fold


def crossval(
    manifest: str | Path,
    model: str,
    sources: Sequence[str],
    out_dir: str | Path,
    train_options: dict[str, Any] | None = None,
    options: EvaluationOptions | None = None,
    cache_dir: str | Path = "runs/cache",
    retrain: bool = False,
    command: str = "",
    runner: Callable[[Callable[..., dict[str, Any]], list[dict[str, Any]]], list[dict[str, Any]]]
    | None = None,
) -> dict[str, Any]:
    """Train and evaluate one fold per held-out source; write ``crossval.json``, ``.md`` and ``.html``.

    ``train_options`` are :class:`covidxray.training.config.TrainConfig` fields (epochs, image_size, ...). A fold
    whose run folder already holds ``run.json`` and a bundle is reused unless ``retrain``. ``runner`` runs the
    folds (:func:`run_fold` calls): one after the other here by default, or as Ray tasks
    (:func:`covidxray.evaluation.ray_trials.ray_runner`); the outputs are the same.
    """
    from covidxray.data.manifest import read_manifest

    o = options or EvaluationOptions()
    df = read_manifest(manifest)
    known = sorted(set(df["source"].astype(str)))
    unknown = [s for s in sources if s not in known]
    if unknown:
        raise ValueError(f"source(s) {unknown} not in the manifest; its sources are {known}")
    out = Path(out_dir)
    calls = [
        {
            "manifest": manifest,
            "model": model,
            "source": source,
            "out_dir": out,
            "train_options": train_options,
            "options": o,
            "cache_dir": cache_dir,
            "retrain": retrain,
        }
        for source in sources
    ]
    if runner is None:
        folds = [run_fold(**call, manifest_df=df) for call in calls]
    else:
        folds = runner(run_fold, calls)
    result = {
        "model": model,
        "manifest": str(Path(manifest).resolve()),
        "manifest_sha1": df.attrs.get("manifest_sha1"),
        "train_options": train_options or {},
        "command": command,
        "folds": folds,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str) + "\n")
    crossval_report(result).write(out, "crossval")
    return result
