"""The evaluation report (report.md / report.html), built from the ``metrics.json`` dictionary alone."""

from __future__ import annotations

import re
from typing import Any

from covidxray.evaluation.document import Figure, Report, fmt
from covidxray.evaluation.figures import confusion_matrix_png, reliability_png, roc_curves_png, site_curve_png
from covidxray.evaluation.metrics import CLASS_METRICS
from covidxray.evaluation.probe import EXPLANATION

METRIC_NAMES = {
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC",
}


def cell(m: dict[str, Any] | None) -> str:
    """A metric entry as table text: value [CI], or n/a with its reason."""
    if not m:
        return "n/a"
    if m.get("value") is None:
        return f"n/a ({m['reason']})" if m.get("reason") else "n/a"
    s = fmt(m["value"], m.get("ci"))
    if m.get("ci") is None and m.get("ci_reason"):
        s += f" (no interval: {m['ci_reason']})"
    return s


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def add_group(report: Report, g: dict[str, Any], name: str, level: int = 3) -> None:
    """Summary table, per-class table and the three figures of one group of images."""
    counts = ", ".join(f"{c} {n}" for c, n in g["label_counts"].items())
    report.paragraph(f"{g['n_images']} images of {g['n_patients']} patients ({counts}).")
    report.table(
        ["metric", "value [95% CI]"],
        [
            ["accuracy", cell(g["accuracy"])],
            ["loss (cross-entropy)", cell(g["loss"])],
            ["ECE", cell(g["ece"])],
            ["macro ROC AUC", cell(g["macro"]["roc_auc"])],
            ["macro PR AUC", cell(g["macro"]["pr_auc"])],
        ],
    )
    notes = [f"{METRIC_NAMES[name]}: {m['note']}" for name, m in g["macro"].items() if m.get("note")]
    if notes:
        report.paragraph("Macro averages: " + "; ".join(notes) + ".")
    report.table(
        ["class", "n", *(METRIC_NAMES[m] for m in CLASS_METRICS)],
        [
            [c, g["label_counts"][c], *(cell(per[m]) for m in CLASS_METRICS)]
            for c, per in g["per_class"].items()
        ],
    )
    if not g["n_images"]:
        return
    slug = _slug(name)
    cm = g["confusion_matrix"]
    report.figures(
        [
            Figure(
                f"confusion_{slug}",
                confusion_matrix_png(
                    cm["rows_true_columns_predicted"], cm["classes"], f"confusion matrix: {name}"
                ),
                f"Confusion matrix, {name}",
            ),
            Figure(
                f"roc_{slug}",
                roc_curves_png(g.get("roc_curves", {}), f"ROC: {name}"),
                f"ROC curves (one-vs-rest), {name}",
            ),
            Figure(
                f"reliability_{slug}",
                reliability_png(g["calibration"], g["ece"]["value"], f"reliability: {name}"),
                f"Reliability diagram, {name}",
            ),
        ]
    )


def add_operating_points(report: Report, ops: dict[str, Any] | None) -> None:
    """Sensitivity / specificity at every operating point on the evaluated images; the deciding one marked."""
    if not ops:
        return
    report.heading("Decision at each operating point", 2)
    if "points" not in ops:
        report.paragraph(f"No operating point: {ops.get('reason', 'not computed')}.")
        return
    report.paragraph(
        f"Operating points {ops['source']}; the label is decided by '{ops['decision']}' (its class when its "
        "probability >= threshold, otherwise the most probable other class). Sensitivity and specificity of "
        "that rule on the evaluated images, with 95 % patient-bootstrap intervals."
        + (f" Not re-chosen: {ops['kept']}." if ops.get("kept") else "")
    )
    rows = []
    for name, r in ops["points"].items():
        if "threshold" not in r:
            rows.append([name, "", r.get("reason", "n/a"), "", "", "", ""])
            continue
        chosen = r.get("chosen_on") or {}
        where = chosen.get("description") or chosen.get("split") or ""
        if chosen.get("n_images") is not None:
            where += f" ({chosen['n_images']} images)"
        rows.append(
            [
                name + (" (decides)" if r.get("decides") else ""),
                f"{r['threshold']:.4f}",
                r.get("rule") or "",
                where,
                cell(r["sensitivity"]),
                cell(r["specificity"]),
                f"{r['n_positive']} / {r['n_images']}",
            ]
        )
    report.table(
        ["point", "threshold", "rule", "chosen on", "sensitivity", "specificity", "positive / images"], rows
    )


def add_adults(report: Report, adults: dict[str, Any] | None) -> None:
    """The same metrics on adults alone, and the decision at each operating point there."""
    if not adults:
        return
    report.heading("Adults only", 2)
    left = ", ".join(f"{s} {n}" for s, n in adults["children_left_out"].items())
    report.paragraph(
        f"The X-rays a COVID-19 model meets are adults'; most public normals and pneumonias are children's, and a "
        f"child is an easy negative. Children left out ({left}): {adults['rule']}."
    )
    add_group(report, adults["group"], "adults")
    points = adults.get("points") or {}
    if points:
        report.table(
            ["point (adults)", "threshold", "sensitivity", "specificity", "positive / images"],
            [
                [
                    name + (" (decides)" if r.get("decides") else ""),
                    f"{r['threshold']:.4f}",
                    cell(r["sensitivity"]),
                    cell(r["specificity"]),
                    f"{r['n_positive']} / {r['n_images']}",
                ]
                for name, r in points.items()
            ],
        )


def add_site_curve(report: Report, curve: dict[str, Any] | None) -> None:
    """How the re-tuned threshold's sensitivity / specificity vary with the number of site images."""
    if not curve:
        return
    report.heading("How many site images are needed", 2)
    report.paragraph(curve["description"])
    report.table(
        ["site images", "threshold (median, 95 % range)", "sensitivity", "specificity", "draws"],
        [
            [
                r["n_images"],
                f"{r['threshold']['median']:.4f} [{r['threshold']['low']:.4f}, {r['threshold']['high']:.4f}]",
                f"{r['sensitivity']['median']:.3f} [{r['sensitivity']['low']:.3f}, {r['sensitivity']['high']:.3f}]",
                f"{r['specificity']['median']:.3f} [{r['specificity']['low']:.3f}, {r['specificity']['high']:.3f}]",
                r["draws"],
            ]
            for r in curve["rows"]
        ],
    )
    if curve["rows"]:
        png = site_curve_png(curve["rows"], f"re-tuned threshold ({curve['rule']}) vs number of site images")
        report.figures([Figure("site_curve", png, "Sensitivity and specificity vs number of site images")])


def add_operating_point(report: Report, op: dict[str, Any]) -> None:
    report.heading("Operating point", 2)
    if "threshold" not in op:
        report.paragraph(f"No operating point: {op['reason']}.")
        return
    chosen, test = op["chosen_on"], op["test"]
    report.paragraph(
        f"Rule: predict {op['class']} when p({op['class']}) >= {op['threshold']:.4f}. The threshold is the highest "
        f"reaching sensitivity {op['target_sensitivity']:.2f} on the '{chosen['split']}' split "
        f"({chosen['n_positive']} {op['class']} of {chosen['n_images']} images), then applied unchanged to "
        f"'{test['split']}'."
        + (
            f" Stored in the bundle ({op['stored_in_bundle']}), so predictions use it."
            if op.get("stored_in_bundle")
            else ""
        )
    )
    rows = [
        [
            f"{chosen['split']} (chosen on)",
            fmt(chosen["sensitivity"]),
            fmt(chosen["specificity"]),
            chosen["n_positive"],
            chosen["n_images"],
        ],
        [
            f"{test['split']} (all sources)",
            cell(test["sensitivity"]),
            cell(test["specificity"]),
            test["n_positive"],
            test["n_images"],
        ],
    ]
    for s, r in op.get("per_source", {}).items():
        rows.append(
            [
                f"{test['split']}: {s}",
                cell(r["sensitivity"]),
                cell(r["specificity"]),
                r["n_positive"],
                r["n_images"],
            ]
        )
    report.table(
        ["data", "sensitivity [95% CI]", "specificity [95% CI]", f"{op['class']} images", "images"], rows
    )


def add_probe(report: Report, probe: dict[str, Any] | None) -> None:
    report.heading("Shortcut probe: does the model know where an image came from?", 2)
    if probe is None:
        report.paragraph("Not run.")
        return
    if probe["balanced_accuracy"] is None:
        report.paragraph(f"Not applicable: {probe['reason']}.")
    else:
        report.table(
            ["probe", "balanced accuracy"],
            [
                ["source from the model's penultimate features", fmt(probe["balanced_accuracy"])],
                ["chance (1 / number of sources)", fmt(probe["chance"])],
                ["label-only baseline (source from the true diagnosis)", fmt(probe["label_only_baseline"])],
            ],
        )
        report.paragraph(
            f"{probe['n_images']} images of {probe['n_patients']} patients, {probe['n_features']} features, "
            f"{probe['n_folds']}-fold cross-validation grouped by patient. Recall per source: "
            + ", ".join(f"{s} {fmt(r)}" for s, r in probe["recall_per_source"].items())
            + "."
        )
    for s, why in probe.get("left_out", {}).items():
        report.paragraph(f"Source '{s}' left out of the probe: {why}.")
    report.paragraph(EXPLANATION)


LUNG_ATTENTION_EXPLANATION = (
    "Grad-CAM of the predicted class on the model input; the lung fields come from the shipped lung segmenter "
    "run on that same input. 'in lungs' is the share of the heatmap's total inside the lung fields; 'lung area' "
    "is the share of the input the lungs cover, i.e. what a heatmap spread evenly over the image would score. "
    "A model that reads the lungs should score well above the lung area; one that reads text, markers, borders "
    "or devices (source shortcuts, DeGrave et al. 2021) scores near or below it."
)


def add_lung_attention(report: Report, att: dict[str, Any] | None) -> None:
    """The 'Where the model looks' section: in-lung Grad-CAM share overall, per source and per class."""
    report.heading("Where the model looks: Grad-CAM inside the lung fields", 2)
    if not att:
        report.paragraph("Not measured (--lung-attention 0, or the architecture names no Grad-CAM layer).")
        return
    rows = []
    for group, entries in (
        ("all", {"all images": att["overall"]}),
        ("source", att["per_source"]),
        ("class", att["per_class"]),
    ):
        for name, m in entries.items():
            label = name if group == "all" else f"{group}: {name}"
            rows.append(
                [
                    label,
                    m["n_images"],
                    fmt(m.get("in_lung_share")),
                    fmt(m.get("median")),
                    fmt(m.get("lung_area")),
                ]
            )
    report.table(["images", "n", "in lungs (mean)", "in lungs (median)", "lung area"], rows)
    smp = att["sampled"]
    report.paragraph(
        f"{smp['n_images']} of {smp['of']} evaluated images (seeded sample, seed {smp['seed']}). "
        + LUNG_ATTENTION_EXPLANATION
    )


def evaluation_report(result: dict[str, Any]) -> Report:
    data, model = result["data"], result.get("model", {})
    title = f"Evaluation of {model.get('architecture', 'a model')} on the '{data['split']}' split"
    report = Report(title)
    for w in result["warnings"]:
        report.warning(w)
    for n in result.get("notes", []):
        report.paragraph(f"Note: {n}")
    boot = result["method"]["bootstrap"]
    report.paragraph(
        f"Model: {model.get('bundle', '?')}. Data: {data.get('manifest', 'manifest')}, split '{data['split']}', "
        f"{data['n_images']} images of {data['n_patients']} patients from {len(data['sources'])} source(s). "
        f"Intervals: {int(boot['level'] * 100)}% percentile bootstrap over patients ({boot['n_resamples']} "
        f"resamples, seed {boot['seed']}). Predicted class = arg-max; per-class metrics are one-vs-rest; PR AUC is "
        f"average precision; ECE uses {result['method']['ece']['bins']} equal-width bins of the top-class "
        "probability."
    )
    sources = list(data["sources"])
    report.heading("Images per label and source", 2)
    report.table(
        ["label", *sources, "total"],
        [
            [label, *(row.get(s, 0) for s in sources), sum(row.values())]
            for label, row in data["label_by_source"].items()
        ],
    )
    report.heading("All sources", 2)
    add_group(report, result["overall"], "all sources")
    ops = result.get("operating_points") or {}
    if "points" not in ops or "threshold" in result.get("operating_point", {}):
        add_operating_point(report, result.get("operating_point", {"reason": "not computed"}))
    add_operating_points(report, result.get("operating_points"))
    add_site_curve(report, result.get("site_curve"))
    add_adults(report, result.get("adults"))
    add_probe(report, result.get("probe"))
    add_lung_attention(report, result.get("lung_attention"))
    report.heading("Per source", 2)
    report.paragraph(
        "The same metrics for each source separately. A metric that needs a class the source does not "
        "have is n/a, with the reason."
    )
    for s, g in result["per_source"].items():
        report.heading(f"Source: {s}", 3)
        add_group(report, g, s)
    return report
