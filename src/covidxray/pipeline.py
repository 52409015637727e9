"""``covidxray run``: the README's main job -- manifest -> leave-one-source-out folds (choose the epoch and the
operating points out of source) -> train the default model to that epoch -> fit its input guard -> evaluate it ->
export it to ONNX -> print the summary table and the report's path.

The epoch the default model keeps is chosen on the folds' held-out curves, not on its own in-source validation
split (issue #12, item 6): each fold scores every image of the source it never saw after every epoch, and
:func:`choose_epoch` takes the epoch with the highest mean (smoothed) held-out COVID AUC. In-source validation
keeps improving while the held-out AUC stops or falls (BENCHMARKS.md, "Choosing the epoch out of source").

The operating points (``screening``: COVID sensitivity 0.95; ``balanced``: highest min(sensitivity, specificity),
which decides) are chosen on **out-of-source predictions**: the recipe is trained once more per
leave-one-source-out fold (each source with COVID-19 held out in turn, without the copies of its images that the
other collections hold), each fold model predicts every image of the source it never saw, and the thresholds are
chosen on those predictions -- not on the default model's own in-source validation split, whose threshold does
not travel to another hospital (issue #12). With fewer than two sources holding COVID-19 there is no such fold,
and ``evaluate`` chooses them on validation as before. The screening point is a probability chosen on the pooled
predictions.

The balanced point is chosen on the *fold* models but decides for the *default* model, another network whose
probabilities need not sit where theirs do. It is chosen and carried as a rank, an in-source COVID sensitivity
(:func:`fold_balanced_point`): each fold model at its own threshold for a sensitivity level on its in-source
validation rows, the level with the highest min(mean sensitivity, mean specificity) over the folds' held-out
sources; the default model then decides at the highest threshold that gives at least that sensitivity on its
validation split (:func:`carry_balanced_point`). Between the folds of five recipes, a point carried as a rank kept
min(sensitivity, specificity) on the held-out source higher than the bare probability in all ten cases
(BENCHMARKS.md, "Carrying the operating point to another model"); choosing the level fold by fold, instead of as
one probability over the pooled predictions, keeps the larger fold from setting it alone (BENCHMARKS.md,
"Leave-one-source-out without copies").

Each step writes a stamp (``<out>/stamps/<step>.json``) holding a fingerprint of its inputs and its
arguments; a step whose stamp matches and whose output exists is skipped, like make. ``--force`` reruns all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from covidxray.about import NOT_FOR_CLINICAL_USE

# The recipe of the default model: what `covidxray run` trains and what src/covidxray/default_model was made with.
# seed_cnn6 (seed 000's CNN) with Glorot initialisation on the lung fields' crop (`resize: lungcrop`, found by the
# shipped segmenter), 96 px, 20 epochs of 2,048 images, keeping the average of the weights of epochs 11-20
# (`average_from`, stochastic weight averaging). Chosen on leave-one-source-out figures, not on in-source
# validation: of the techniques of the generalization ablation (BENCHMARKS.md, "Generalization ablation"), the
# lung crop raised the mean out-of-source COVID AUC (0.640 -> 0.709 under the ablation's 10-epoch protocol);
# source adversaries, acquisition randomisation, 128 px and the larger seed_cnn2 did not, alone or with the crop.
# Without copies of the held-out images in training (2026-12-03), averaging epochs 11-20 beat the single epoch the
# folds chose on all three seeds (mean out-of-source COVID AUC 0.728 / 0.701 / 0.729 against 0.710 / 0.675 /
# 0.725 at the epoch chosen on both folds) and balanced its points better; MixStyle, seed ensembles, and under
# the same averaging a source adversary, acquisition randomisation, 128 px, 30 epochs, other sampler source
# shares (`source_power` 0 / 0.25), SGD, label smoothing, weight decay, lr 3e-4 and the smaller seed_cnn422k did
# not beat it (BENCHMARKS.md, "Leave-one-source-out without copies").
# The recipe is trained three times by `covidxray run` (one run per leave-one-source-out fold, for the operating
# points, then all sources), so it is kept short enough for the whole job to fit in 30 minutes on 2 cores. A fixed
# epoch count rather than a time budget makes the result the same on any machine; max_minutes only caps a slow one.
DEFAULT_RECIPE: dict[str, Any] = {
    "model": "seed_cnn6",
    "init": "glorot",
    "epochs": 20,
    "image_size": 96,
    "resize": "lungcrop",
    "batch_size": 32,
    "lr": 1e-3,
    "optimizer": "adam",
    "loss": "ce",
    "augment": "light",
    "sampler": "balanced",
    "class_weights": "auto",
    "seed": 0,
    "patience": 10,
    "epoch_samples": 2048,
    "max_minutes": 15.0,
    "average_from": 11,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="the main job: build the manifest, train the default model, evaluate it, print the report",
        description=__doc__,
    )
    p.add_argument("--root", default="../shared/data", help="folder of chest X-ray collections")
    p.add_argument("--out", default="runs", help="where the manifest, cache, run and report go")
    p.add_argument("--model", default=DEFAULT_RECIPE["model"], help="architecture of the model to train")
    p.add_argument("--epochs", type=int, default=DEFAULT_RECIPE["epochs"])
    p.add_argument("--image-size", type=int, default=DEFAULT_RECIPE["image_size"])
    p.add_argument(
        "--max-minutes",
        type=float,
        default=DEFAULT_RECIPE["max_minutes"],
        help="training time budget (stops after the epoch that exceeds it)",
    )
    p.add_argument("--seed", type=int, default=DEFAULT_RECIPE["seed"])
    p.add_argument(
        "--average-from",
        type=int,
        default=DEFAULT_RECIPE["average_from"],
        help="keep the average of the weights of this epoch to the last (0: keep one epoch, chosen out of source)",
    )
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--force", action="store_true", help="rerun every step even when up to date")
    p.set_defaults(func=_cmd_run)


def root_fingerprint(root: Path) -> str:
    """sha1 over (relative path, size, mtime) of every file under ``root``: changes when any file does."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Steps:
    """Runs named steps, skipping those whose stamp (inputs fingerprint) matches and whose output exists."""

    def __init__(self, stamp_dir: Path, force: bool = False):
        self.stamp_dir = stamp_dir
        self.force = force

    def run(self, name: str, inputs: dict[str, Any], output: Path, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` unless up to date; returns True when it ran."""
        from covidxray.kernels import pinned_kernels

        stamp = self.stamp_dir / f"{name}.json"
        kernels = pinned_kernels()
        if kernels:  # other kernels, other results: a pinned run does not reuse a native run's steps
            inputs = {**inputs, "kernels": kernels}
        key = hashlib.sha1(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        if not self.force and output.exists() and stamp.is_file():
            if json.loads(stamp.read_text()).get("key") == key:
                print(f"[{name}] up to date: {output}")
                return False
        print(f"[{name}] running ...", flush=True)
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        self.stamp_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(
            json.dumps({"key": key, "inputs": inputs, "seconds": round(seconds, 1)}, indent=2, default=str)
        )
        print(f"[{name}] done in {seconds:.0f} s: {output}", flush=True)
        return True


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """The four steps; returns the evaluation metrics."""
    from covidxray.errors import EXIT_INPUT, CLIError

    root = Path(args.root)
    if not root.is_dir():
        raise CLIError(
            f"data root {root} is not a folder: pass --root PATH to the chest X-ray collections", EXIT_INPUT
        )
    out = Path(args.out)
    steps = Steps(out / "stamps", force=args.force)
    manifest = out / "data" / "manifest.csv"
    cache_dir = out / "cache"
    run_dir = out / "default"
    bundle_dir = run_dir / "model"
    eval_dir = run_dir / "evaluation"

    def build() -> None:
        from covidxray.data.manifest import build_manifest

        build_manifest(root, out=manifest, seed=args.seed, workers=args.workers)

    steps.run(
        "manifest",
        {"root": str(root.resolve()), "files": root_fingerprint(root), "seed": args.seed},
        manifest,
        build,
    )
    manifest_sha1 = file_sha1(manifest)

    recipe = dict(
        DEFAULT_RECIPE,
        model=args.model,
        epochs=args.epochs,
        image_size=args.image_size,
        max_minutes=args.max_minutes,
        seed=args.seed,
        average_from=args.average_from,
    )
    loso_dir = out / "loso"
    points_file, selection_file = loso_dir / "points.json", loso_dir / "selection.json"

    def loso() -> None:
        from covidxray.data.manifest import read_manifest

        points, selection = loso_operating_points(
            manifest, read_manifest(manifest), recipe, loso_dir, cache_dir, args.workers
        )
        if points is None:
            print("no leave-one-source-out fold (fewer than two sources hold COVID-19): points chosen on val")
        else:
            kept = averaging_text(selection) or (
                f"epoch chosen out of source: {selection['epoch']} ({selection['rule']})"
            )
            print(
                f"{kept}; operating points "
                + ", ".join(f"{k} p(covid) >= {v['threshold']:.3f}" for k, v in points.items())
                + "; balanced decides"
            )
        loso_dir.mkdir(parents=True, exist_ok=True)
        selection_file.write_text(json.dumps(selection, indent=2) + "\n")
        points_file.write_text(json.dumps(points, indent=2) + "\n")

    # the folds come first: they choose the epoch the default model keeps and the points it decides with
    # "points": the version of what points.json holds (2: the balanced point's in-source sensitivity, carried to
    # the default model by carry_balanced_point; 3-4: that sensitivity chosen fold by fold, fold_balanced_point);
    # an older loso step reruns
    steps.run("loso", {"manifest": manifest_sha1, "recipe": recipe, "points": 4}, points_file, loso)
    points = json.loads(points_file.read_text())
    selection = json.loads(selection_file.read_text()) if selection_file.is_file() else {"epoch": 0}
    points_sha1 = file_sha1(points_file)

    def train() -> None:
        from covidxray.bundle import set_operating_points
        from covidxray.training.config import TrainConfig
        from covidxray.training.trainer import train as train_model

        cfg = TrainConfig(
            manifest=str(manifest),
            out=str(run_dir),
            cache_dir=str(cache_dir),
            workers=args.workers,
            select_epoch=int(selection["epoch"]),
            **recipe,
        )
        train_model(cfg)
        if points is not None:
            from covidxray.data.manifest import read_manifest

            carried = carry_balanced_point(bundle_dir, read_manifest(manifest), cache_dir, points)
            set_operating_points(bundle_dir, carried, "balanced")
            b = carried["balanced"]
            if "carried" in b:
                print(
                    f"balanced point carried to the default model: p(covid) >= {b['threshold']:.3f} (its "
                    f"validation sensitivity >= {b['carried']['in_source_sensitivity']:.3f}, the fold models' on "
                    f"their in-source validation rows at their balanced point, mean p(covid) >= "
                    f"{b['carried']['fold_threshold']:.3f})"
                )
            else:
                print(
                    f"balanced point kept as the pooled p(covid) >= {b['threshold']:.3f} (nothing to carry it on)"
                )

    steps.run(
        "train",
        {"manifest": manifest_sha1, "recipe": recipe, "epoch": selection["epoch"], "points": points_sha1},
        bundle_dir / "model.safetensors",
        train,
    )
    weights_sha1 = file_sha1(bundle_dir / "model.safetensors")

    def guard() -> None:
        from covidxray.data.manifest import read_manifest
        from covidxray.prediction.guard import fit_guard_on_split, guard_summary

        guard = fit_guard_on_split(bundle_dir, read_manifest(manifest), cache_dir, split="train")
        print(f"{guard_summary(guard)}, stored in {bundle_dir / 'config.json'}")

    steps.run(
        "guard",
        {"manifest": manifest_sha1, "weights": weights_sha1, "points": points_sha1},
        bundle_dir / "config.json",
        guard,
    )

    def evaluate() -> None:
        from covidxray.data.manifest import read_manifest
        from covidxray.evaluation.evaluate import evaluate as evaluate_model

        evaluate_model(bundle_dir, read_manifest(manifest), eval_dir, cache_dir, manifest_path=manifest)

    steps.run(
        "evaluate",
        {"manifest": manifest_sha1, "weights": weights_sha1, "points": points_sha1},
        eval_dir / "metrics.json",
        evaluate,
    )

    def export() -> None:
        from covidxray.prediction.export import export_onnx

        export_onnx(bundle_dir, bundle_dir / "model.onnx")

    # after evaluation, so the ONNX metadata carries the operating point chosen on val
    steps.run(
        "export",
        {"config": file_sha1(bundle_dir / "config.json"), "weights": weights_sha1},
        bundle_dir / "model.onnx",
        export,
    )
    return json.loads((eval_dir / "metrics.json").read_text())


def loso_folds(df: Any, cls: str = "covid") -> list[str]:
    """The sources a leave-one-source-out fold can hold out for ``cls``: each has images of ``cls`` and of other
    classes, and the other sources together still have ``cls`` to learn from."""
    label, source = df["label"].astype(str), df["source"].astype(str)
    with_cls = set(source[label == cls])
    with_other = set(source[label != cls])
    return sorted(s for s in with_cls & with_other if with_cls - {s})


def choose_epoch(curves: dict[str, list[float | None]], smooth: int = 3) -> dict[str, Any]:
    """The epoch whose mean held-out COVID AUC over the folds is highest (item 6 of issue #12).

    ``curves`` = {fold: [held-out COVID AUC after epoch 1, 2, ...]}. Only epochs every fold reached count; each
    fold's curve is first averaged over a window of ``smooth`` epochs, centred and shifted inwards at the ends
    (one epoch's AUC moves with the LR schedule and the draw of 2,048 images); ties go to the earlier epoch.
    ``epoch`` 0 when no curve is defined (then the run keeps its best epoch on validation)."""
    import numpy as np

    n = min((len(c) for c in curves.values()), default=0)
    rule = (
        f"highest mean over {len(curves)} leave-one-source-out folds of the held-out source's COVID AUC, "
        f"each curve smoothed over {smooth} epochs"
    )
    if not n or any(v is None for c in curves.values() for v in c[:n]):
        return {"epoch": 0, "rule": "no held-out COVID AUC curve: best epoch on validation", "curves": curves}
    width = min(smooth, n)

    # centred, shifted inwards at the ends so every epoch averages `width` values
    def window(i: int) -> slice:
        start = min(max(0, i - width // 2), n - width)
        return slice(start, start + width)

    smoothed = {f: [float(np.mean(c[:n][window(i)])) for i in range(n)] for f, c in curves.items()}
    mean = [float(np.mean([smoothed[f][i] for f in curves])) for i in range(n)]
    best = int(np.argmax(mean))
    return {
        "epoch": best + 1,
        "rule": rule,
        "mean_smoothed_auc": round(mean[best], 4),
        "mean_smoothed_curve": [round(v, 4) for v in mean],
        "curves": {f: [round(float(v), 4) for v in c[:n]] for f, c in curves.items()},
    }


def averaged_selection(
    curves: dict[str, list[float | None]], out: Path, folds: list[str], first: int
) -> dict[str, Any]:
    """What replaces :func:`choose_epoch` when the recipe averages its weights (``average_from``): no epoch is
    chosen, each model keeps the mean of the weights of epochs ``first`` to its last. Records each fold's
    averaged epochs (None: the fold stopped before ``first`` and kept its best epoch), ``averaged_epochs`` when
    every fold averaged the same epochs, and the folds' per-epoch held-out curves and averaged models' held-out
    COVID AUC."""
    runs = {f: json.loads((out / f / "run.json").read_text()) for f in folds}
    by_fold = {f: r.get("averaged_epochs") for f, r in runs.items()}
    same = {tuple(v) for v in by_fold.values() if v}
    common = list(same.pop()) if len(same) == 1 and all(by_fold.values()) else None
    return {
        "epoch": 0,
        "averaged_epochs": common,
        "averaged_epochs_by_fold": by_fold,
        "rule": f"no epoch chosen: every model keeps the average of the weights of epochs {first} to its last "
        "(weight averaging, average_from)",
        "averaged_holdout_auc_covid": {
            f: (r.get("averaged_holdout") or {}).get("holdout_auc_covid") for f, r in runs.items()
        },
        "curves": {f: [None if v is None else round(float(v), 4) for v in c] for f, c in curves.items()},
    }


def averaging_text(selection: dict[str, Any]) -> str:
    """How the fold models' weights were kept, for the points' description and the printout ("" when the
    recipe does not average)."""
    if "averaged_epochs_by_fold" not in selection:
        return ""
    if selection.get("averaged_epochs"):
        first, last = selection["averaged_epochs"]
        return f"each the average of epochs {first}-{last}"
    return "; ".join(
        f"{f}: average of epochs {v[0]}-{v[1]}" if v else f"{f}: not averaged (stopped early)"
        for f, v in selection["averaged_epochs_by_fold"].items()
    )


def loso_operating_points(
    manifest: Path,
    df: Any,
    recipe: dict[str, Any],
    out: Path,
    cache_dir: Path,
    workers: int,
    cls: str = "covid",
) -> tuple[dict[str, dict] | None, dict[str, Any]]:
    """Train ``recipe`` once per :func:`loso_folds` fold (into ``out/<source>``), keeping every epoch's weights
    and the held-out source's COVID AUC after each; choose the epoch on those curves (:func:`choose_epoch`),
    rebuild each fold model at that epoch, predict every image of its held-out source, and choose the screening
    and balanced points on the pooled predictions (written to ``out/pooled.csv``). Returns (points, selection);
    points is None when there is no fold."""
    import numpy as np
    import pandas as pd

    from covidxray.bundle import load_bundle
    from covidxray.evaluation.inference import run_inference
    from covidxray.evaluation.operating_point import choose_operating_points, rates_at
    from covidxray.training.config import TrainConfig
    from covidxray.training.history import read_history
    from covidxray.training.trainer import reselect_epoch
    from covidxray.training.trainer import train as train_model

    folds = loso_folds(df, cls)
    if len(folds) < 1:
        return None, {"epoch": 0, "rule": "no leave-one-source-out fold: best epoch on validation"}
    curves = {}
    if not recipe.get("average_from"):  # the folds' per-epoch held-out curves choose the epoch: keep them
        recipe = {**recipe, "holdout_final_only": False}
    for fold in folds:
        run = out / fold
        cfg = TrainConfig(
            manifest=str(manifest),
            out=str(run),
            cache_dir=str(cache_dir),
            workers=workers,
            holdout_source=fold,
            progress=False,
            epoch_weights=True,
            **recipe,
        )
        train_model(cfg, df)
        curves[fold] = [h.get(f"holdout_auc_{cls}") for h in read_history(run)]
    first = int(recipe.get("average_from") or 0)
    selection = averaged_selection(curves, out, folds, first) if first else choose_epoch(curves)
    pooled, in_source = [], []
    src, split = df["source"].astype(str).to_numpy(), df["split"].astype(str).to_numpy()
    for fold in folds:
        run = out / fold
        if selection["epoch"]:
            reselect_epoch(run, selection["epoch"], f"select_epoch {selection['epoch']}: {selection['rule']}")
        bundle = load_bundle(run / "model")
        # every image of the held-out source, then the fold's own in-source validation rows
        for rows, parts in (
            (np.flatnonzero(src == fold), pooled),
            (np.flatnonzero((src != fold) & (split == "val")), in_source),
        ):
            res = run_inference(bundle, df, cache_dir, 64, rows)
            part = df.iloc[rows][["path", "source", "label", "patient_id"]].copy()
            part["p"] = res.probability(cls)
            part["fold"] = fold
            parts.append(part)
    pool = pd.concat(pooled, ignore_index=True)
    pool.to_csv(out / "pooled.csv", index=False)
    val = pd.concat(in_source, ignore_index=True)
    val.to_csv(out / "in_source_val.csv", index=False)
    points = choose_operating_points(
        (pool["label"].astype(str) == cls).to_numpy(),
        pool["p"].to_numpy(),
        (pool["source"].astype(str) + ":" + pool["patient_id"].astype(str)).to_numpy(),
        cls=cls,
        description=(
            "pooled out-of-source predictions of leave-one-source-out runs of the same recipe ("
            + ", ".join(f"{f} held out" for f in folds)
            + (f", each at epoch {selection['epoch']}" if selection["epoch"] else "")
            + (f", {averaged}" if (averaged := averaging_text(selection)) else "")
            + ")"
        ),
    )
    # the balanced point is chosen in the unit it is carried in, an in-source sensitivity, with every fold at its
    # own threshold for it and the folds weighted equally (fold_balanced_point); the pooled probability is kept
    # as the fallback when the folds' validation rows hold no COVID-19
    balanced = fold_balanced_point(pool, val, cls)
    if balanced is None:
        t = float(points["balanced"]["threshold"])
        points["balanced"]["in_source_sensitivity"] = rates_at(
            (val["label"].astype(str) == cls).to_numpy(), val["p"].to_numpy(), t
        )["sensitivity"]
    else:
        chosen = dict(points["balanced"]["chosen_on"])
        chosen["description"] = chosen["description"].replace(
            "pooled out-of-source predictions", "out-of-source predictions, each fold counted once,", 1
        )
        points["balanced"] = {"class": cls, **balanced, "chosen_on": chosen}
    return points, selection


def fold_balanced_point(pool: Any, val: Any, cls: str = "covid", step: float = 0.01) -> dict[str, Any] | None:
    """The balanced point as an in-source sensitivity level ``s``: each fold model at its own highest threshold
    with COVID sensitivity >= ``s`` on its in-source validation rows, ``s`` chosen for the highest min(mean
    sensitivity, mean specificity) on the folds' held-out sources (the mean over folds: each fold counts once).

    Why not the pooled probability: the folds' probabilities sit on different scales, and pooling lets the
    fold with the most held-out images choose the threshold (4,200 Radiography images against 523 of cohen)
    while the other fold's validation rows set what that threshold means in source -- the two weightings
    disagree, and the carried sensitivity landed at 0.27 where each fold alone balances at about 0.7. Choosing
    ``s`` directly removes both: the unit is the one the default model is carried in (:func:`carry_balanced_point`),
    and on both folds the in-source sensitivity at a threshold is close to the held-out sensitivity there
    (BENCHMARKS.md, "Leave-one-source-out without copies"). None when no fold has COVID-19 in its validation rows
    and both classes held out.
    """
    import numpy as np

    from covidxray.evaluation.operating_point import rates_at, threshold_for_sensitivity

    folds = {}
    for fold, held in pool.groupby("fold", sort=True):
        own = val[val["fold"] == fold]
        y_val = (own["label"].astype(str) == cls).to_numpy()
        y_held = (held["label"].astype(str) == cls).to_numpy()
        if y_val.any() and y_held.any() and not y_held.all():
            folds[fold] = (y_val, own["p"].to_numpy(), y_held, held["p"].to_numpy())
    if not folds:
        return None
    best: tuple[float, float] | None = None
    for level in np.round(np.arange(step, 1 + 1e-9, step), 6):
        rates = [
            rates_at(y_held, p_held, threshold_for_sensitivity(y_val, p_val, float(level)))
            for y_val, p_val, y_held, p_held in folds.values()
        ]
        worse = min(np.mean([r["sensitivity"] for r in rates]), np.mean([r["specificity"] for r in rates]))
        if best is None or worse > best[1] + 1e-12:
            best = (float(level), float(worse))
    level = best[0]
    per_fold = {}
    for fold, (y_val, p_val, y_held, p_held) in folds.items():
        t = threshold_for_sensitivity(y_val, p_val, level)
        per_fold[fold] = {"threshold": t, "n_images": int(len(y_held)), **rates_at(y_held, p_held, t)}
    mean = {k: float(np.mean([f[k] for f in per_fold.values()])) for k in ("sensitivity", "specificity")}
    return {
        "threshold": float(np.mean([f["threshold"] for f in per_fold.values()])),
        "rule": "max min(sensitivity,specificity) out of source, folds weighted equally, each fold at its "
        "threshold for one in-source COVID sensitivity",
        "in_source_sensitivity": level,
        "sensitivity": {"value": mean["sensitivity"], "ci": None},
        "specificity": {"value": mean["specificity"], "ci": None},
        "per_fold": per_fold,
        "note": "threshold = the mean of the fold models' thresholds (used only where nothing carries the level); "
        "sensitivity/specificity = the mean over the folds' held-out sources, measured on the images the level "
        "was chosen on (optimistic)",
    }


def carry_balanced_point(
    bundle_dir: Path, df: Any, cache_dir: Path, points: dict[str, dict], cls: str = "covid"
) -> dict[str, dict]:
    """``points`` with the balanced threshold carried from the fold models to the model at ``bundle_dir``: the
    highest threshold at which that model's COVID sensitivity on its validation split is at least the
    ``in_source_sensitivity`` the fold models had at the pooled threshold (see the module docstring). Points
    without that figure (older points files), with a sensitivity of 0, or with no COVID-19 in the validation split
    are returned unchanged."""
    import numpy as np

    from covidxray.bundle import load_bundle
    from covidxray.evaluation.inference import run_inference
    from covidxray.evaluation.operating_point import rates_at, threshold_for_sensitivity

    b = points.get("balanced", {})
    if not b.get("in_source_sensitivity"):  # None (no COVID-19 in the folds' validation rows) or 0: no rank
        return points
    bundle = load_bundle(bundle_dir)
    rows = np.flatnonzero((df["split"].astype(str) == "val").to_numpy())
    p = run_inference(bundle, df, cache_dir, 64, rows).probability(cls)
    y = df["label"].astype(str).to_numpy()[rows] == cls
    target = float(b["in_source_sensitivity"])
    if not y.any():  # no COVID-19 in the validation split: nothing to carry the rank on
        print(f"no {cls} image in the validation split: the balanced point stays the pooled probability")
        return points
    t = threshold_for_sensitivity(y, p, target)
    # what was measured at the fold threshold on the pooled images moves under "carried": it is not this
    # threshold's
    measured = (
        "threshold",
        "threshold_ci",
        "in_source_sensitivity",
        "sensitivity",
        "specificity",
        "note",
        "per_fold",
    )
    carried = {k: v for k, v in b.items() if k not in measured}
    carried["threshold"] = t
    chosen = dict(b.get("chosen_on") or {})
    chosen["description"] = (
        chosen.get("description", "pooled out-of-source predictions")
        + f"; carried to this model as the threshold that gives it COVID sensitivity >= {target:.3f} on its "
        f"validation split ({len(rows)} images), the fold models' in-source sensitivity at the balanced point"
    )
    carried["chosen_on"] = chosen
    carried["carried"] = {
        "rule": "the highest threshold with COVID sensitivity on this model's validation split at least the "
        "fold models' sensitivity on their in-source validation rows at the balanced point",
        "fold_threshold": float(b["threshold"]),
        "fold_threshold_ci": b.get("threshold_ci"),
        "out_of_source_at_fold_point": {k: b[k] for k in ("sensitivity", "specificity", "note") if k in b},
        **({"per_fold": b["per_fold"]} if "per_fold" in b else {}),
        "in_source_sensitivity": target,
        "validation": {"n_images": int(len(rows)), **rates_at(y, p, t)},
    }
    return {**points, "balanced": carried}


def _cmd_run(args: argparse.Namespace) -> int:
    from covidxray.evaluation.terminal_summary import summary_lines

    metrics = run_pipeline(args)
    print()
    for line in summary_lines(metrics):
        print(line)
    print(NOT_FOR_CLINICAL_USE)
    return 0
