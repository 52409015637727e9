"""``covidxray evaluate``: a saved model on one split of a manifest -> metrics.json, report.md, report.html.

:func:`evaluate` maps the manifest's labels onto the model's classes (:func:`covidxray.data.tasks.task_labels`),
runs the bundle over the evaluated rows and the validation rows, builds the metrics dictionary
(:mod:`.metrics_json`), chooses the COVID operating point on validation data, stores it in the bundle, and writes the
three files.

Test-time augmentation (``options.tta``) and small ensembles (a list of bundles, probabilities averaged by
:mod:`covidxray.ensemble`) are evaluated the way the predictor computes them, so their effect can be measured. Their
operating point is reported but never stored: it belongs to the averaged probabilities, not to one bundle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidxray.evaluation.metrics_json import EvaluationOptions, evaluate_predictions, operating_point_metrics

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["METRICS_FILE", "EvaluationOptions", "evaluate", "task_rows"]

METRICS_FILE = "metrics.json"


def task_rows(
    df: pd.DataFrame, classes: list[str], split: str = "all"
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows of ``split`` whose label belongs to the task, labels mapped onto ``classes``; and the dropped counts.

    The frame keeps ``df.attrs`` (the manifest's root and hash) so the cache can find the images.
    """
    from covidxray.data.tasks import task_labels

    if split != "all":
        if "split" not in df.columns:
            raise ValueError("the manifest has no 'split' column; split it first or use --split all")
        df_split = df[df["split"].astype(str) == split]
    else:
        df_split = df
    mapped = task_labels(df_split["label"], classes)
    dropped = df_split.loc[mapped.isna(), "label"].astype(str).value_counts().to_dict()
    rows = df_split[mapped.notna()].copy()
    rows["label"] = mapped[mapped.notna()].astype(str)
    rows.attrs = dict(df.attrs)
    return rows, {str(k): int(v) for k, v in sorted(dropped.items())}


def _arrays(df: pd.DataFrame, probs: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "labels": df["label"].astype(str).to_numpy(),
        "probs": probs,
        "patient_ids": df["patient_id"].astype(str).to_numpy(),
        "sources": df["source"].astype(str).to_numpy(),
    }


def points_kept(config: Any) -> str | None:
    """Why ``evaluate`` must not replace the bundle's operating points (None: it may).

    ``evaluate`` replaces only points it chose itself on a split (their ``chosen_on`` names one); points from
    ``covidxray recalibrate`` or :func:`covidxray.bundle.set_operating_points` (e.g. chosen on pooled
    leave-one-source-out predictions) are kept.
    """
    if "recalibration" in config.extra:
        return "the bundle was re-tuned for a site by 'covidxray recalibrate'; its points are kept"
    for name, point in config.operating_points.items():
        chosen = point.get("chosen_on")
        if not (isinstance(chosen, dict) and chosen.get("split")):
            where = chosen.get("description") if isinstance(chosen, dict) else chosen
            return f"the bundle's '{name}' point was chosen on {where or 'other data'}; its points are kept"
    return None


def operating_points_section(
    config: Any,
    classes: list[str],
    test: dict[str, np.ndarray],
    val: dict[str, np.ndarray] | None,
    op: Any,
    o: EvaluationOptions,
) -> dict[str, Any]:
    """Sensitivity / specificity (patient-bootstrap intervals) at every operating point on the evaluated rows.

    With validation rows the points are chosen there (``chosen``: screening + balanced, to be stored); without
    (or when ``val`` is None because the bundle's points must be kept, see :func:`points_kept`), the bundle's
    stored points are applied, so another site's images are judged at the decision the model makes.
    """
    from covidxray.decision import SCREENING
    from covidxray.evaluation.operating_point import apply_operating_points, choose_operating_points

    stored, stored_decision = dict(config.operating_points), config.decision
    out: dict[str, Any] = {}
    if op is not None and val is not None:
        k = classes.index(o.operating_class)
        points = choose_operating_points(
            np.asarray(val["labels"], dtype=str) == o.operating_class,
            val["probs"][:, k],
            val["patient_ids"],
            cls=o.operating_class,
            screening_sensitivity=o.target_sensitivity,
            description=f"the '{o.val_split}' split",
            n_resamples=o.n_resamples,
            seed=o.seed,
        )
        for point in points.values():
            point["chosen_on"]["split"] = o.val_split
        out.update(source=f"chosen on the '{o.val_split}' split", chosen=points)
        out["decision"] = stored_decision if stored_decision in points else SCREENING
    elif stored:
        points = stored
        out.update(source="stored in the bundle", decision=stored_decision)
    else:
        return {
            "reason": "the model stores no operating point and there are no validation rows to choose one on"
        }
    out["points"] = apply_operating_points(
        points,
        classes,
        test["labels"],
        test["probs"],
        test["patient_ids"],
        f"the '{o.split}' split",
        o.n_resamples,
        o.seed,
    )
    for name, applied in out["points"].items():
        applied["class"] = points[name].get("class", "covid")
        applied["chosen_on"] = points[name].get("chosen_on")
        applied["decides"] = name == out["decision"]
    return out


def adults_section(
    manifest_df: pd.DataFrame,
    test_df: pd.DataFrame,
    test: dict[str, np.ndarray],
    classes: list[str],
    ops: dict[str, Any],
    o: EvaluationOptions,
) -> dict[str, Any] | None:
    """The evaluation on adults alone (:func:`covidxray.data.population.children` left out), with sensitivity and
    specificity at every operating point; None when the evaluated rows hold no child or nothing but children.

    The X-rays a COVID-19 model meets are adults', while most public normals and pneumonias are children's; a child
    is an easy negative, so the all-sources figures overstate what the model does on adults.
    """
    from covidxray.data.population import CHILDREN_RULE, children
    from covidxray.evaluation.metrics import encode_labels
    from covidxray.evaluation.metrics_json import group_metrics
    from covidxray.evaluation.operating_point import apply_operating_points

    child = children(manifest_df)[manifest_df.index.get_indexer(test_df.index)]
    if not child.any() or child.all():
        return None
    adult = {k: v[~child] for k, v in test.items()}
    sources = test["sources"][child]
    section: dict[str, Any] = {
        "rule": CHILDREN_RULE,
        "n_images": int((~child).sum()),
        "children_left_out": {s: int(np.sum(sources == s)) for s in sorted(set(sources.tolist()))},
        "group": group_metrics(
            encode_labels(adult["labels"], classes), adult["probs"], classes, adult["patient_ids"], o
        ),
    }
    # a point without a threshold (its class not the model's) has nothing to apply; every point kept has one
    points = {n: p for n, p in (ops.get("points") or {}).items() if "threshold" in p}
    if points:
        kept = {n: {"class": p["class"], "threshold": p["threshold"]} for n, p in points.items()}
        where = (
            "the adults of the evaluated images"
            if o.split == "all"
            else f"the adults of the '{o.split}' split"
        )
        applied = apply_operating_points(
            kept, classes, adult["labels"], adult["probs"], adult["patient_ids"], where, o.n_resamples, o.seed
        )
        for name, r in applied.items():
            r.update(rule=points[name].get("rule"), decides=bool(points[name].get("decides")))
        section["points"] = applied
    return section


class _Rows:
    """Rows ``positions`` of a (memory-mapped) image array, indexable like an array without copying it all."""

    def __init__(self, images: np.ndarray, positions: np.ndarray):
        self.images, self.positions = images, np.asarray(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, pick):
        return np.stack([self.images[i] for i in self.positions[pick]])


def evaluate(
    bundle_path: str | Path | list[str | Path],
    manifest_df: pd.DataFrame,
    out_dir: str | Path,
    cache_dir: str | Path = "runs/cache",
    options: EvaluationOptions | None = None,
    manifest_path: str | Path | None = None,
    rows: pd.Series | None = None,
    val_rows: pd.Series | None = None,
) -> dict[str, Any]:
    """Evaluate the bundle at ``bundle_path`` on ``options.split`` of the manifest; write the three files.

    ``rows`` (a boolean mask over ``manifest_df``, default all) narrows the evaluated rows further, e.g. to some
    sources. The operating point is chosen on ``val_rows`` (default: the ``options.val_split`` rows), applied to
    the evaluated rows, and stored in the bundle's ``config.json`` unless ``options.store_operating_point`` is
    False. Images come from the cache of the whole manifest. Returns the metrics dictionary (``metrics.json``).

    A list of bundle paths evaluates their ensemble (they must predict the same classes, else
    :class:`covidxray.ensemble.EnsembleError`); ``options.tta > 1`` averages over test-time views.
    """
    from covidxray.bundle import load_bundle, set_operating_points
    from covidxray.ensemble import average_probabilities, class_columns
    from covidxray.evaluation.inference import InferenceResult, run_inference
    from covidxray.evaluation.metrics_report import evaluation_report
    from covidxray.preprocess import tta_views

    o = options or EvaluationOptions()
    if not manifest_df.index.is_unique:
        raise ValueError("the manifest DataFrame's index must be unique (read it with read_manifest)")
    views = tta_views(o.tta)
    members = [
        load_bundle(p) for p in (bundle_path if isinstance(bundle_path, list | tuple) else [bundle_path])
    ]
    bundle = members[0]
    classes = list(bundle.config.classes)
    columns = [class_columns(classes, list(m.config.classes), str(m.path)) for m in members]
    averaged = len(members) > 1 or len(views) > 1
    selected = manifest_df if rows is None else manifest_df[rows.reindex(manifest_df.index, fill_value=False)]
    test_df, dropped = task_rows(selected, classes, o.split)
    if test_df.empty:
        raise ValueError(f"the manifest has no rows labelled {', '.join(classes)} in split '{o.split}'")

    def infer(df: pd.DataFrame, features: bool = False):
        rows = manifest_df.index.get_indexer(df.index)
        runs = [run_inference(m, manifest_df, cache_dir, o.batch_size, rows, len(views)) for m in members]
        probs = average_probabilities([r.probabilities for r in runs], columns)
        return InferenceResult(probs, runs[0].features, classes) if features else probs

    test_run = infer(test_df, features=True)
    test = _arrays(test_df, test_run.probabilities)
    result = evaluate_predictions(
        test["labels"], test["probs"], classes, test["patient_ids"], test["sources"],
        test_run.features if o.probe else None, o,
    )  # fmt: skip
    result["data"]["task"] = {"classes": classes, "left_out_labels": dropped}
    if o.lung_attention and getattr(bundle.model.net, "gradcam_layer", ""):
        from covidxray.evaluation.attention import lung_attention
        from covidxray.evaluation.inference import manifest_images

        p = bundle.config.preprocessing
        images = manifest_images(manifest_df, p, cache_dir)
        positions = manifest_df.index.get_indexer(test_df.index)
        result["lung_attention"] = lung_attention(
            bundle.model, p, _Rows(images, positions), test["probs"].argmax(axis=1), test["labels"],
            test["sources"], classes, max_images=o.lung_attention, seed=o.seed,
        )  # fmt: skip
    if dropped:
        left = ", ".join(f"{n} {label}" for label, n in dropped.items())
        result.setdefault("notes", []).append(
            f"left out {left} image(s): not a class of this model ({', '.join(classes)})"
        )

    if val_rows is None and o.split != o.val_split and "split" in manifest_df.columns:
        val_rows = manifest_df["split"].astype(str) == o.val_split
    val = None
    if val_rows is not None:
        val_df, _ = task_rows(manifest_df[val_rows.reindex(manifest_df.index, fill_value=False)], classes)
        if len(val_df):
            val = _arrays(val_df, infer(val_df))
    section, op = operating_point_metrics(classes, test, val, o)
    kept = points_kept(bundle.config)
    ops = operating_points_section(bundle.config, classes, test, None if kept else val, op, o)
    if kept:
        ops["kept"] = kept
    elif op is not None and averaged:
        section["not_stored"] = ops["not_stored"] = (
            "chosen on averaged (TTA / ensemble) probabilities, which no single bundle gives"
        )
    elif op is not None and o.store_operating_point:
        set_operating_points(bundle.path, ops["chosen"], ops["decision"])
        section["stored_in_bundle"] = ops["stored_in_bundle"] = str(bundle.path)
    result["operating_points"] = ops
    result["operating_point"] = section
    adults = adults_section(manifest_df, test_df, test, classes, ops, o)
    if adults is not None:
        result["adults"] = adults
    result["model"] = {
        "bundle": str(Path(bundle.path).resolve()),
        "architecture": "+".join(m.config.architecture for m in members),
        "architecture_kwargs": bundle.config.architecture_kwargs,
        "classes": classes,
        "parameters": int(sum(p.numel() for m in members for p in m.model.parameters())),
        "preprocessing": bundle.config.preprocessing.to_dict(),
        "tta": list(views),
        "ensemble": [str(Path(m.path).resolve()) for m in members] if len(members) > 1 else None,
    }
    if averaged:
        how = []
        if len(members) > 1:
            how.append(
                f"the mean probability of {len(members)} models ({', '.join(str(m.path) for m in members)})"
            )
        if len(views) > 1:
            how.append(f"test-time augmentation over {len(views)} views ({', '.join(views)})")
        result.setdefault("notes", []).append("predictions are " + " with ".join(how))
    if manifest_path is not None:
        result["data"]["manifest"] = str(Path(manifest_path).resolve())
    if manifest_df.attrs.get("manifest_sha1"):
        result["data"]["manifest_sha1"] = manifest_df.attrs["manifest_sha1"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["report"] = {
        "markdown": str((out / "report.md").resolve()),
        "html": str((out / "report.html").resolve()),
    }
    evaluation_report(result).write(out)
    (out / METRICS_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result
