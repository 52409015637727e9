"""``covidxray recalibrate``: re-tune a model's decision on a hospital's own labelled X-rays.

A model's ranking travels between hospitals better than its threshold does. :func:`recalibrate` runs a bundle
over one split of a site's manifest (the calibration images), chooses the operating points there with the same
rules as the bundle's own (``screening``: sensitivity >= 0.95, ``balanced``: max min(sensitivity, specificity),
or a ``site`` point for ``--target-sensitivity`` / ``--target-specificity``), optionally re-fits temperature
scaling there, and writes a complete new bundle + ``model.onnx`` whose config records the site, the images used,
the thresholds with bootstrap intervals and the model it came from. The network's weights are copied unchanged
(with ``temperature`` the last layer's weights and bias are divided by T, which is exactly temperature scaling, so
every surface -- CLI, Python API, web, ONNX -- applies it with no new code). When the manifest also holds test
rows, the report compares sensitivity and specificity at the decision before and after, with patient-bootstrap
intervals, and shows how many site images a stable threshold needs.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidxray.about import NOT_FOR_CLINICAL_USE

if TYPE_CHECKING:
    import pandas as pd

RECALIBRATION_FILE = "recalibration.json"
REPORT_STEM = "recalibration"


class CalibrationSetError(ValueError):
    """Calibration images that cannot re-tune a threshold (e.g. only one class), with what to do."""


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature T minimising the cross-entropy of softmax(log p / T) on labelled images (integer labels)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(probs, 1e-12, 1.0))
    y = np.asarray(labels, np.int64)

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    z = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _target(target_sensitivity: float | None, target_specificity: float | None) -> tuple[str, float] | None:
    if target_sensitivity is not None and target_specificity is not None:
        raise ValueError("give --target-sensitivity or --target-specificity, not both")
    for kind, value in (("sensitivity", target_sensitivity), ("specificity", target_specificity)):
        if value is not None:
            if not 0 < value <= 1:
                raise ValueError(f"--target-{kind} must be in (0, 1], got {value}")
            return kind, float(value)
    return None


def _kind_target(point: dict[str, Any]) -> tuple[str, float | None]:
    rule = str(point.get("rule", ""))
    for kind in ("sensitivity", "specificity"):
        if rule.startswith(f"{kind}>="):
            return kind, float(rule.split(">=")[1])
    return "balanced", None


def recalibrate(
    model_path: str | Path | None,
    manifest_df: pd.DataFrame,
    out_dir: str | Path,
    split: str = "train",
    site: str | None = None,
    target_sensitivity: float | None = None,
    target_specificity: float | None = None,
    temperature: bool = False,
    cache_dir: str | Path = "runs/cache",
    n_resamples: int = 1000,
    seed: int = 0,
    manifest_path: str | Path | None = None,
    test_split: str | None = "test",
    curve_sizes: tuple[int, ...] | None = None,
    onnx: bool = True,
    decision: str | None = None,
) -> dict[str, Any]:
    """Re-tune the decision of the bundle at ``model_path`` (None: the shipped model) on ``split`` of a site's
    manifest and write the new bundle to ``out_dir``. Returns the facts written to ``recalibration.json``.

    ``decision`` names the point that decides (screening, balanced, or site with a target); default: ``site``
    when a target is given, otherwise the parent's deciding point's name.

    Raises :class:`CalibrationSetError` when the calibration rows lack COVID-19 or non-COVID images, ValueError
    for other unusable input.
    """
    from covidxray.bundle import WEIGHTS_FILE, load_bundle, resolve_model_path, save_bundle
    from covidxray.decision import BALANCED, SCREENING, SITE
    from covidxray.evaluation.document import Report
    from covidxray.evaluation.evaluate import task_rows
    from covidxray.evaluation.inference import run_inference
    from covidxray.evaluation.metrics_report import add_site_curve
    from covidxray.evaluation.operating_point import (
        DEFAULT_CURVE_SIZES,
        choose_operating_points,
        rates_with_intervals,
        site_size_curve,
    )
    from covidxray.prediction.backend import weights_version
    from covidxray.prediction.export import export_onnx

    target = _target(target_sensitivity, target_specificity)
    if decision is not None and decision not in (SCREENING, BALANCED, SITE):
        raise ValueError(f"--decision must be screening, balanced or site, got {decision!r}")
    if decision == SITE and target is None:
        raise ValueError("--decision site needs --target-sensitivity or --target-specificity")
    bundle_dir = resolve_model_path(model_path, "torch")
    bundle = load_bundle(bundle_dir)
    parent_cfg = bundle.config
    classes = list(parent_cfg.classes)
    cls = "covid"
    if cls not in classes:
        raise ValueError(f"{bundle_dir}: the model has no 'covid' class (classes: {', '.join(classes)})")
    out = Path(out_dir)
    if out.resolve() == Path(bundle_dir).resolve():
        raise ValueError(f"--out {out} is the model itself; write the recalibrated model to a new folder")
    site = site or (str(sorted(set(manifest_df["source"].astype(str)))[0]) if len(manifest_df) else "site")
    where = f"manifest {manifest_path}" if manifest_path else "the manifest"

    calib_df, dropped = task_rows(manifest_df, classes, split)
    y_cal = calib_df["label"].astype(str).to_numpy() == cls
    n_pos, n_neg = int(y_cal.sum()), int((~y_cal).sum())
    if n_pos == 0 or n_neg == 0:
        missing = "COVID-19 ('covid')" if n_pos == 0 else "non-COVID ('normal' or 'pneumonia')"
        raise CalibrationSetError(
            f"the '{split}' rows of {where} hold {len(calib_df)} usable image(s): {n_pos} COVID-19 and {n_neg} "
            f"non-COVID. Re-tuning a threshold needs both: add labelled {missing} images of the site "
            "(a class folder such as covid/ or normal/), rebuild the manifest and split it again "
            "(covidxray data build --root SITE --fractions 0.3 0 0.7)"
        )

    def infer(df: pd.DataFrame) -> np.ndarray:
        run = run_inference(bundle, manifest_df, cache_dir, rows=manifest_df.index.get_indexer(df.index))
        return run.probabilities

    p_cal_parent = infer(calib_df)
    # the site's test rows (before / after), run now: with temperature the network's last layer changes below
    test_df = None
    if test_split and test_split != split and "split" in manifest_df.columns:
        test_df, _ = task_rows(manifest_df, classes, test_split)
        test_df = test_df if len(test_df) else None
    p_test_parent = infer(test_df) if test_df is not None else None
    t_fit = None
    p_cal = p_cal_parent
    if temperature:
        t_fit = fit_temperature(np.array([classes.index(v) for v in calib_df["label"]]), p_cal_parent)
        p_cal = apply_temperature(p_cal_parent, t_fit)
    k = classes.index(cls)
    pids = calib_df["patient_id"].astype(str).to_numpy()
    desc = f"site '{site}': '{split}' rows of {Path(manifest_path).name if manifest_path else 'its manifest'}"
    points = choose_operating_points(
        y_cal, p_cal[:, k], pids, cls=cls, target=target, description=desc, n_resamples=n_resamples, seed=seed
    )
    if decision is None:
        decision = SITE if target else (parent_cfg.decision if parent_cfg.decision in points else SCREENING)

    parent_version = weights_version(parent_cfg.architecture, Path(bundle_dir) / WEIGHTS_FILE)
    provenance = {
        "site": site,
        "manifest": str(Path(manifest_path).resolve()) if manifest_path else None,
        "manifest_sha1": manifest_df.attrs.get("manifest_sha1"),
        "split": split,
        "n_images": int(len(calib_df)),
        "n_patients": len(set(pids.tolist())),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "left_out_labels": dropped,
        "decision": decision,
        "temperature": t_fit,
        "weights": "unchanged"
        if t_fit is None
        else f"unchanged except the last layer's weights and bias divided by T = {t_fit:.4f} (temperature scaling)",
        "parent": {
            "path": str(Path(bundle_dir).resolve()),
            "version": parent_version,
            "decision": parent_cfg.decision,
            "operating_points": parent_cfg.operating_points,
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }

    import copy

    import torch

    model = bundle.model
    if t_fit is not None:
        last = [m for m in model.net.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.div_(t_fit)
            if last.bias is not None:
                last.bias.div_(t_fit)
    cfg = copy.deepcopy(parent_cfg)
    cfg.operating_points, cfg.decision = points, decision
    cfg.extra = {**cfg.extra, "recalibration": provenance}
    cfg.created = ""
    save_bundle(out, model, cfg)
    result: dict[str, Any] = {
        "bundle": str(out.resolve()),
        "recalibration": provenance,
        "operating_points": points,
    }

    parent_point = parent_cfg.operating_point
    new_point = points[decision]
    kind, value = _kind_target(new_point)
    if test_df is not None and p_test_parent is not None:
        p_test = apply_temperature(p_test_parent, t_fit) if t_fit else p_test_parent
        y_test = test_df["label"].astype(str).to_numpy() == cls
        tp_ids = test_df["patient_id"].astype(str).to_numpy()
        comparison = {
            "split": test_split,
            "n_images": int(len(test_df)),
            "n_positive": int(y_test.sum()),
            "n_negative": int((~y_test).sum()),
        }
        if parent_point is not None:
            comparison["before"] = {
                "point": parent_cfg.decision,
                "threshold": float(parent_point["threshold"]),
                **rates_with_intervals(y_test, p_test_parent[:, k], float(parent_point["threshold"]), tp_ids,
                                       n_resamples, seed),
            }  # fmt: skip
        comparison["after"] = {
            "point": decision,
            "threshold": float(new_point["threshold"]),
            **rates_with_intervals(
                y_test, p_test[:, k], float(new_point["threshold"]), tp_ids, n_resamples, seed
            ),
        }
        result["test"] = comparison
        curve = site_size_curve(
            y_cal,
            p_cal[:, k],
            y_test,
            p_test[:, k],
            kind,
            value,
            curve_sizes or DEFAULT_CURVE_SIZES,
            seed=seed,
        )
    else:
        curve = site_size_curve(y_cal, p_cal[:, k], None, None, kind, value, curve_sizes or DEFAULT_CURVE_SIZES,
                                seed=seed)  # fmt: skip
    result["site_curve"] = curve
    provenance["test"] = result.get("test")
    cfg.extra["recalibration"] = provenance
    from covidxray.bundle import write_config

    write_config(out, cfg)
    if onnx:  # after the final config: the ONNX metadata carries it
        result["onnx"] = export_onnx(out, out / "model.onnx")

    report = Report(f"Recalibration for site '{site}'")
    add_recalibration(report, result)
    add_site_curve(report, curve)
    report.paragraph(NOT_FOR_CLINICAL_USE)
    report.write(out, stem=REPORT_STEM)
    (out / RECALIBRATION_FILE).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def format_rate(r: dict[str, Any]) -> str:
    """``0.912 [0.870, 0.950]`` from ``{"value", "ci"}``; n/a with the reason."""
    v, ci = r.get("value"), r.get("ci")
    if v is None:
        return f"n/a ({r.get('reason', '')})"
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def add_recalibration(report: Any, result: dict[str, Any]) -> None:
    """The points chosen at the site, and the decision before / after on the site's test images."""
    prov = result["recalibration"]
    report.paragraph(
        f"Calibration images: {prov['n_images']} ({prov['n_positive']} COVID-19, {prov['n_negative']} non-COVID, "
        f"{prov['n_patients']} patients) from the '{prov['split']}' rows. Parent model {prov['parent']['version']} "
        f"(decision '{prov['parent']['decision']}'); the new bundle decides with '{prov['decision']}'. Weights: "
        f"{prov['weights']}."
    )
    report.heading("Operating points chosen at the site", 2)
    report.table(
        ["point", "rule", "threshold [95 % bootstrap]", "sensitivity (in-sample)", "specificity (in-sample)"],
        [
            [
                name + (" (decides)" if name == prov["decision"] else ""),
                p["rule"],
                f"{p['threshold']:.4f}"
                + (
                    f" [{p['threshold_ci'][0]:.4f}, {p['threshold_ci'][1]:.4f}]"
                    if p.get("threshold_ci")
                    else ""
                ),
                format_rate(p["sensitivity"]),
                format_rate(p["specificity"]),
            ]
            for name, p in result["operating_points"].items()
        ],
    )
    test = result.get("test")
    if not test:
        report.paragraph(
            "No test rows in the manifest: the in-sample figures above are optimistic. Split the site's images "
            "(covidxray data build --fractions 0.3 0 0.7) to measure the decision on images it was not tuned on."
        )
        return
    report.heading(f"Decision on the site's '{test['split']}' images, before and after", 2)
    report.paragraph(
        f"{test['n_images']} images ({test['n_positive']} COVID-19, {test['n_negative']} non-COVID) not used for "
        "re-tuning; 95 % intervals from a bootstrap over patients."
    )
    rows = []
    for when in ("before", "after"):
        r = test.get(when)
        if r:
            rows.append(
                [
                    when,
                    r["point"],
                    f"{r['threshold']:.4f}",
                    format_rate(r["sensitivity"]),
                    format_rate(r["specificity"]),
                ]
            )
    report.table(["", "deciding point", "threshold", "sensitivity", "specificity"], rows)
