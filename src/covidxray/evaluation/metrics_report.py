"""The evaluation report (report.md / report.html), built from the ``metrics.json`` dictionary alone."""

from __future__ import annotations

import re
from typing import Any

from covidxray.evaluation.document import Figure, Report, fmt
from covidxray.evaluation.figures import confusion_matrix_png, reliability_png, roc_curves_png
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
    add_operating_point(report, result.get("operating_point", {"reason": "not computed"}))
    add_probe(report, result.get("probe"))
    report.heading("Per source", 2)
    report.paragraph(
        "The same metrics for each source separately. A metric that needs a class the source does not "
        "have is n/a, with the reason."
    )
    for s, g in result["per_source"].items():
        report.heading(f"Source: {s}", 3)
        add_group(report, g, s)
    return report
