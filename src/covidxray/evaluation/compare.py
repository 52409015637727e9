"""``covidxray compare``: trained models side by side.

For each run: parameters, training time and epochs (``run.json``), inference images/s (the model timed on one
fixed batch, on this machine), and every metric of its evaluation with the 95 % interval (``<run>/evaluation/
metrics.json``; evaluated first when missing and a manifest is given). A comparison is only fair on the same
evaluated data: the report warns when the runs were evaluated on different manifests, splits or image counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from covidxray.evaluation.document import Report, fmt
from covidxray.evaluation.metrics import CLASS_METRICS
from covidxray.evaluation.metrics_report import METRIC_NAMES, cell
from covidxray.evaluation.ray_trials import run_locally

RESULT_FILE = "comparison.json"
METRICS_FILE = "metrics.json"


def run_name(bundle: Path) -> str:
    """``runs/resnet18/model`` -> ``resnet18``; a bare bundle folder keeps its own name."""
    return bundle.parent.name if bundle.name == "model" else bundle.name


def read_run_json(bundle: Path) -> dict[str, Any]:
    """The trainer's ``run.json`` beside the bundle (empty when the bundle did not come from a run folder)."""
    path = bundle.parent / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_facts(bundle: Path, metrics: dict[str, Any], images_per_second: float) -> dict[str, Any]:
    """What the comparison shows of one run, from its bundle, run.json and evaluation metrics."""
    from covidxray.bundle import read_config

    config = read_config(bundle)
    run = read_run_json(bundle)
    return {
        "name": run_name(bundle),
        "bundle": str(bundle.resolve()),
        "architecture": config.architecture,
        "classes": list(config.classes),
        "image_size": config.preprocessing.image_size,
        "parameters": metrics.get("model", {}).get("parameters"),
        "train_seconds": run.get("train_seconds"),
        "epochs_run": run.get("epochs_run"),
        "best_epoch": run.get("best_epoch"),
        "averaged_epochs": run.get("averaged_epochs"),
        "images_per_second": images_per_second,
        "probe_chance": (metrics.get("probe") or {}).get("chance"),
        "evaluated_on": {
            k: metrics["data"].get(k) for k in ("manifest", "manifest_sha1", "split", "n_images")
        },
        "metrics": metrics,
    }


def _kept(r: dict) -> str:
    """The kept epoch, or the averaged epochs of a run trained with ``average_from``."""
    avg = r.get("averaged_epochs")
    return f"average {avg[0]}-{avg[1]}" if avg else str(r["best_epoch"])


def metric_rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any] | None]]]:
    """(metric label, entry per run) for every metric any run has; None where a run lacks it."""

    def get(m: dict[str, Any], *path: str) -> dict[str, Any] | None:
        for p in path:
            if not isinstance(m, dict) or p not in m:
                return None
            m = m[p]
        return m

    ms = [r["metrics"] for r in runs]
    rows = [
        (label, [get(m, "overall", *path) for m in ms])
        for label, path in (
            ("accuracy", ("accuracy",)),
            ("loss", ("loss",)),
            ("ECE", ("ece",)),
            ("macro ROC AUC", ("macro", "roc_auc")),
            ("macro PR AUC", ("macro", "pr_auc")),
        )
    ]
    classes = list(dict.fromkeys(c for m in ms for c in m["overall"]["per_class"]))
    for c in classes:
        rows += [
            (f"{c} {METRIC_NAMES[n]}", [get(m, "overall", "per_class", c, n) for m in ms])
            for n in CLASS_METRICS
        ]
    rows += [
        ("operating point sensitivity", [get(m, "operating_point", "test", "sensitivity") for m in ms]),
        ("operating point specificity", [get(m, "operating_point", "test", "specificity") for m in ms]),
    ]
    rows.append(("Grad-CAM in lungs (share)", [_share(get(m, "lung_attention", "overall")) for m in ms]))
    att_sources = list(
        dict.fromkeys(s for m in ms for s in (m.get("lung_attention") or {}).get("per_source", {}))
    )
    rows += [
        (f"Grad-CAM in lungs: {s}", [_share(get(m, "lung_attention", "per_source", s)) for m in ms])
        for s in att_sources
    ]
    att_classes = list(
        dict.fromkeys(c for m in ms for c in (m.get("lung_attention") or {}).get("per_class", {}))
    )
    rows += [
        (f"Grad-CAM in lungs: {c}", [_share(get(m, "lung_attention", "per_class", c)) for m in ms])
        for c in att_classes
    ]
    probe = [get(m, "probe", "balanced_accuracy") for m in ms]
    rows.append(
        (
            "shortcut probe (source balanced accuracy)",
            [None if v is None else {"value": v, "ci": None} for v in probe],
        )
    )
    return rows


def _share(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """An in-lung Grad-CAM summary as a metric cell (no interval)."""
    if not entry or entry.get("in_lung_share") is None:
        return None
    return {"value": entry["in_lung_share"], "ci": None}


def consistency_warnings(runs: list[dict[str, Any]]) -> list[str]:
    """A warning when the runs were not evaluated on the same data."""
    seen = {json.dumps(r["evaluated_on"], sort_keys=True) for r in runs}
    if len(seen) <= 1:
        return []
    detail = "; ".join(f"{r['name']}: {r['evaluated_on']}" for r in runs)
    return [
        f"the runs were evaluated on different data, so their metrics are not directly comparable ({detail})"
    ]


HEADLINE_METRICS = ("accuracy", "macro ROC AUC", "covid ROC AUC", "operating point sensitivity",
                    "operating point specificity")  # fmt: skip
HEADLINE_COLUMNS = [
    "model", "parameters", "image size", "training time", "inference images/s", "accuracy [95% CI]",
    "macro ROC AUC [95% CI]", "COVID ROC AUC [95% CI]", "COVID sensitivity at operating point [95% CI]",
    "COVID specificity at operating point [95% CI]", "shortcut probe (chance)", "Grad-CAM in lungs",
]  # fmt: skip


def headline_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per run, the columns of BENCHMARKS.md's model comparison."""
    by_label = dict(result["metrics"])
    rows = []
    for i, r in enumerate(result["runs"]):
        probe = by_label["shortcut probe (source balanced accuracy)"][i]
        chance = r.get("probe_chance")
        rows.append([
            r["name"], "n/a" if r["parameters"] is None else f"{r['parameters']:,}", str(r["image_size"]),
            _duration(r["train_seconds"]), fmt(r["images_per_second"], digits=1),
            *(cell(by_label[m][i]) if m in by_label else "n/a" for m in HEADLINE_METRICS),
            cell(probe) + ("" if chance is None else f" ({fmt(chance)})"),
            cell(by_label.get("Grad-CAM in lungs (share)", [None] * len(result["runs"]))[i]),
        ])  # fmt: skip
    return rows


def comparison_report(result: dict[str, Any]) -> Report:
    runs = result["runs"]
    report = Report("Model comparison")
    for w in result["warnings"]:
        report.warning(w)
    first = runs[0]["evaluated_on"]
    report.paragraph(
        f"Evaluated on {first.get('manifest')} (sha1 {first.get('manifest_sha1')}), split '{first.get('split')}', "
        f"{first.get('n_images')} images. Intervals: 95% bootstrap over patients. Inference speed: "
        f"{result['timing']}."
    )
    report.heading("Models", 2)
    report.table(
        [
            "model",
            "architecture",
            "classes",
            "image size",
            "parameters",
            "training time",
            "epochs (kept)",
            "inference images/s",
        ],
        [
            [
                r["name"],
                r["architecture"],
                ", ".join(r["classes"]),
                r["image_size"],
                "n/a" if r["parameters"] is None else f"{r['parameters']:,}",
                _duration(r["train_seconds"]),
                "n/a" if r["epochs_run"] is None else f"{r['epochs_run']} ({_kept(r)})",
                fmt(r["images_per_second"], digits=1),
            ]
            for r in runs
        ],
    )
    report.heading("Headline", 2)
    report.table(HEADLINE_COLUMNS, headline_rows(result))
    report.heading("Every metric", 2)
    report.table(
        ["metric", *(r["name"] for r in runs)],
        [[label, *(cell(e) for e in entries)] for label, entries in result["metrics"]],
    )
    return report


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes} min {s:02d} s" if minutes else f"{s} s"


def evaluate_run(
    bundle: Path, eval_dir: Path, manifest: str | Path, cache_dir: str | Path, options=None
) -> str:
    """Evaluate one run for the comparison (writes ``eval_dir/metrics.json``); a trial of its own."""
    from covidxray.data.manifest import read_manifest
    from covidxray.evaluation.evaluate import evaluate

    evaluate(bundle, read_manifest(manifest), eval_dir, cache_dir, options, manifest_path=manifest)
    return str(eval_dir / METRICS_FILE)


def train_run(
    manifest: str | Path,
    model: str,
    out: str | Path,
    cache_dir: str | Path = "runs/cache",
    train_options: dict[str, Any] | None = None,
    retrain: bool = False,
) -> str:
    """Train ``model`` on ``manifest`` into ``out`` (kept when its run finished -- completed, early-stopped or out
    of time budget -- and not ``retrain``); returns the run folder. A trial of its own: ``compare --train`` runs
    one per model, here or as Ray tasks."""
    from covidxray.training.config import TrainConfig
    from covidxray.training.trainer import train

    run = Path(out)
    done = run / "run.json"
    if not retrain and done.is_file() and (run / "model" / "config.json").is_file():
        if json.loads(done.read_text()).get("status") != "running":  # "running": interrupted, train again
            return str(run)
    cfg = TrainConfig(
        manifest=str(manifest), model=model, out=str(run), cache_dir=str(cache_dir), **(train_options or {})
    )
    return str(train(cfg))


def compare(
    bundles: list[Path],
    out_dir: str | Path,
    evaluations: list[Path],
    manifest: str | Path | None = None,
    cache_dir: str | Path = "runs/cache",
    options=None,
    batch_size: int = 16,
    runner: Callable[[Callable[..., str], list[dict[str, Any]]], list[str]] | None = None,
) -> dict[str, Any]:
    """Compare the bundles; ``evaluations[i]`` is bundle i's evaluation folder (evaluated there when empty).

    ``runner`` runs the missing evaluations (:func:`evaluate_run` calls): one after the other here by default,
    or as Ray tasks (:func:`covidxray.evaluation.ray_trials.ray_runner`). Inference speed is always timed here,
    one model after the other, so the images/s column stays comparable.
    """
    import torch

    from covidxray.bundle import load_bundle
    from covidxray.evaluation.inference import images_per_second

    missing = []
    for bundle, eval_dir in zip(bundles, evaluations, strict=True):
        if not (eval_dir / METRICS_FILE).is_file():
            if manifest is None:
                raise ValueError(
                    f"{bundle}: no evaluation at {eval_dir / METRICS_FILE}; give --manifest to evaluate it"
                )
            missing.append(
                {
                    "bundle": bundle,
                    "eval_dir": eval_dir,
                    "manifest": manifest,
                    "cache_dir": cache_dir,
                    "options": options,
                }
            )
    if missing:
        (runner or run_locally)(evaluate_run, missing)
    runs = []
    for bundle, eval_dir in zip(bundles, evaluations, strict=True):
        metrics = json.loads((eval_dir / METRICS_FILE).read_text())
        loaded = load_bundle(bundle)
        speed = images_per_second(loaded.model, loaded.config.preprocessing, batch_size=batch_size)
        runs.append(run_facts(bundle, metrics, speed))
    names = [r["name"] for r in runs]
    for i, r in enumerate(runs):
        if names.count(r["name"]) > 1:
            r["name"] = f"{r['name']} ({i + 1})"
    rows = metric_rows(runs)
    result = {
        "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in runs],
        "metrics": [[label, entries] for label, entries in rows],
        "warnings": consistency_warnings(runs),
        "timing": f"batch of {batch_size} random images at each model's input size, CPU, "
        f"{torch.get_num_threads()} torch thread(s), mean of 3 passes after a warm-up",
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    comparison_report(result).write(out, "comparison")
    return result
