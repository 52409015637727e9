"""The printed summary of an evaluation: a few lines from ``metrics.json`` for the terminal.

Used by ``covidxray evaluate`` and ``covidxray run``. Every figure carries its 95 % interval.
"""

from __future__ import annotations

from typing import Any

from covidxray.evaluation.document import fmt
from covidxray.evaluation.metrics_report import cell


def _row(name: str, *cells: str, width: int = 12) -> str:
    return f"  {name:<{width}}" + "".join(f"  {c:<26}" for c in cells).rstrip()


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """The summary table of an evaluation's metrics dictionary (as written to ``metrics.json``)."""
    data, overall = metrics["data"], metrics["overall"]
    model = metrics.get("model", {})
    lines = [
        f"Evaluation of {model.get('architecture', 'the model')} on split '{data['split']}': "
        f"{data['n_images']} images, {data['n_patients']} patients, sources: "
        + ", ".join(f"{s} {n}" for s, n in data["sources"].items()),
        "(95% intervals: bootstrap over patients)",
        _row("accuracy", cell(overall["accuracy"])),
        _row("macro AUC", cell(overall["macro"]["roc_auc"])),
        _row("ECE", cell(overall["ece"])),
        _row("class", "ROC AUC", "sensitivity (arg-max)", "specificity (arg-max)"),
    ]
    for cls, m in overall["per_class"].items():
        lines.append(_row(cls, cell(m["roc_auc"]), cell(m["sensitivity"]), cell(m["specificity"])))
    ops = metrics.get("operating_points")
    if not (ops and "points" in ops):  # the named points below say which one decides; the val point would not
        lines.append(_operating_point_line(metrics.get("operating_point")))
    lines += operating_points_lines(ops)
    lines += _adults_lines(metrics.get("adults"))
    lines.append(_probe_line(metrics.get("probe")))
    lines += [f"WARNING: {w}" for w in metrics.get("warnings", [])]
    report = metrics.get("report", {})
    if report:
        lines.append(f"report: {report.get('html')} (and {report.get('markdown')})")
    return lines


def _operating_point_line(op: dict[str, Any] | None) -> str:
    if not op:
        return "operating point: not computed"
    if "threshold" not in op:
        return f"operating point: none ({op.get('reason', 'not computed')})"
    test = op["test"]
    return (
        f"operating point: {op['class']} when p >= {op['threshold']:.4f} (target sensitivity "
        f"{op['target_sensitivity']:.2f} on {op['chosen_on']['split']}); on {test['split']}: sensitivity "
        f"{cell(test['sensitivity'])}, specificity {cell(test['specificity'])}"
    )


def operating_points_lines(ops: dict[str, Any] | None) -> list[str]:
    """One line per operating point: sensitivity and specificity at it, the deciding one marked."""
    if not ops:
        return []
    if "points" not in ops:
        return [f"operating points: none ({ops.get('reason', 'not computed')})"]
    lines = [f"operating points ({ops['source']}; decision: {ops['decision']}):"]
    if ops.get("kept"):
        lines[0] += f" [{ops['kept']}]"
    for name, r in ops["points"].items():
        if "threshold" not in r:
            lines.append(f"  {name}: {r.get('reason', 'n/a')}")
            continue
        mark = "  <- decides" if r.get("decides") else ""
        lines.append(
            f"  {name:<10} p >= {r['threshold']:.4f} ({r.get('rule') or 'stored'}): sensitivity "
            f"{cell(r['sensitivity'])}, specificity {cell(r['specificity'])}{mark}"
        )
    return lines


def metrics_class(group: dict[str, Any]) -> str | None:
    """The class an adults line leads with: covid, else the first class with an AUC."""
    per = group["per_class"]
    for c in ["covid", *per]:
        if c in per and (per[c].get("roc_auc") or {}).get("value") is not None:
            return c
    return None


def _adults_lines(adults: dict[str, Any] | None) -> list[str]:
    """COVID AUC on adults alone, and sensitivity / specificity there at the deciding point."""
    if not adults:
        return []
    g = adults["group"]
    left = ", ".join(f"{s} {n}" for s, n in adults["children_left_out"].items())
    cls = metrics_class(g)
    line = f"adults only ({g['n_images']} images; children left out: {left}):"
    if cls:
        line += f" {cls} ROC AUC {cell(g['per_class'][cls]['roc_auc'])}"
    for name, r in (adults.get("points") or {}).items():
        if r.get("decides"):
            rates = f"sensitivity {cell(r['sensitivity'])}, specificity {cell(r['specificity'])}"
            line += f"; at {name} p >= {r['threshold']:.4f}: {rates}"
    return [line]


def _probe_line(probe: dict[str, Any] | None) -> str:
    if not probe:
        return "shortcut probe: not run"
    if probe.get("balanced_accuracy") is None:
        return f"shortcut probe: not applicable ({probe.get('reason', '')})"
    return (
        f"shortcut probe: source predicted from features with balanced accuracy {fmt(probe['balanced_accuracy'])} "
        f"(chance {fmt(probe['chance'])}, label-only baseline {fmt(probe['label_only_baseline'])})"
    )
