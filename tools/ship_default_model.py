"""Ship a trained run as covidxray's default model and write MODEL_CARD.md from its measured results.

    .venv/bin/python tools/ship_default_model.py RUN --manifest runs/data/manifest.csv \
        [--crossval runs/crossval/seed_cnn6/crossval.json] [--generalization combo]

Steps: fit the input guard on the training split if the bundle has none (``covidxray guard``), export ONNX with
the operating point and guard in its metadata (``covidxray export``), copy ``model.safetensors``,
``config.json`` and ``model.onnx`` into ``src/covidxray/default_model/``, and write ``MODEL_CARD.md``: every
figure in it is read from ``RUN/evaluation/metrics.json`` (``covidxray evaluate``) and the cross-validation JSON.
What cannot be read from a file (why this recipe, what else was measured) is kept in ``docs/model_card_notes.md``
(``--notes``): its ``<!-- out-of-source -->`` block goes after the leave-one-source-out table, its
``<!-- limitations -->`` block after the first limitation, so re-shipping never loses them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "src" / "covidxray" / "default_model"
FILES = ("model.safetensors", "config.json", "model.onnx")


def ci(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    lo, hi = m.get("ci") or (None, None)
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m['value']:.3f}"


def metrics_rows(name: str, g: dict[str, Any], classes: list[str]) -> str:
    cells = [name, str(g["n_images"]), ci(g["accuracy"]), ci(g["macro"]["roc_auc"])]
    cells += [ci(g["per_class"].get(c, {}).get("roc_auc")) for c in classes]
    return "| " + " | ".join(cells) + " |"


def operating_points_markdown(ops: dict[str, Any]) -> list[str]:
    """The evaluation report's own "Decision at each operating point" section (as a level-3 heading)."""
    from covidxray.evaluation.document import Report
    from covidxray.evaluation.metrics_report import add_operating_points

    report = Report("operating points")
    add_operating_points(report, ops)
    md = report.to_markdown()
    section = md[md.index("## Decision at each operating point") : md.rindex("\n---\n")]
    return ("#" + section).strip().splitlines()


def adults_points_markdown(adults: dict[str, Any] | None) -> list[str]:
    """Sensitivity / specificity at each operating point on the test split's adults alone (one paragraph)."""
    points = (adults or {}).get("points") or {}
    if not points:
        return []
    left = ", ".join(f"{s} {n}" for s, n in adults["children_left_out"].items())
    rates = "; ".join(
        f"{name}{' (decides)' if r.get('decides') else ''}: sensitivity {ci(r['sensitivity'])}, specificity "
        f"{ci(r['specificity'])}"
        for name, r in points.items()
    )
    group = adults["group"]["label_counts"]
    negatives = sum(n for c, n in group.items() if c != "covid")
    children = sum(adults["children_left_out"].values())
    return [
        f"On the test split's adults alone ({adults['n_images']} images; children left out: {left}): {rates}. "
        f"Specificity over all sources counts the {children} children among the negatives beside "
        f"{negatives} adults.",
        "",
    ]


def _source_share_words(power: float) -> str:
    """How the balanced sampler weighted the sources of a label (``TrainConfig.source_power``)."""
    power = float(power)
    if power == 0.5:
        return "the square root of their size"
    if power == 0.0:
        return "the same share each"
    if power == 1.0:
        return "their size"
    return f"their size to the power {power:g}"


def _optimizer_words(training: dict[str, Any]) -> str:
    """The optimizer as trained: its name, plus weight decay and label smoothing when a run used them."""
    words = str(training.get("optimizer"))
    wd = float(training.get("weight_decay") or 0)
    if wd:
        words += f" (AdamW, weight decay {wd:g})" if words == "adam" else f" (L2 weight decay {wd:g})"
    if float(training.get("label_smoothing") or 0):
        words += f", label smoothing {float(training['label_smoothing']):g}"
    return words


def _selection_words(training: dict[str, Any]) -> str:
    """How the kept epoch was chosen, in words (bundles before ``selected_by`` chose on validation)."""
    how = str(training.get("selected_by") or "best val_auc_macro")
    if training.get("averaged_epochs"):
        first, last = training["averaged_epochs"]
        return (
            f"no single epoch: the mean of the weights of epochs {first}-{last} (`average_from`, stochastic weight "
            "averaging), as in every leave-one-source-out fold of the recipe"
        )
    if how.startswith("select_epoch"):
        return (
            "chosen out of source: the epoch with the highest mean held-out COVID AUC of the leave-one-source-out "
            "folds of the same recipe (`covidxray run`, `runs/loso/selection.json`)"
        )
    return "the best by validation macro ROC AUC"


def _nested_words(folds: dict[str, Any]) -> str:
    """How the fold models of the table were chosen, when it was not on validation."""
    if folds and all(f.get("averaged_epochs") for f in folds.values()):
        which = ", ".join(
            f"{n} held out: epochs {f['averaged_epochs'][0]}-{f['averaged_epochs'][1]}"
            for n, f in folds.items()
        )
        return (
            f" Each fold model keeps the average of its last epochs' weights, as the shipped model does ({which}): "
            "no epoch or model was chosen on the images it is scored on."
        )
    picks = {n: f for n, f in folds.items() if str(f.get("selected_by") or "").startswith("select_epoch")}
    if not picks:
        return ""
    which = ", ".join(f"{n} held out: epoch {f.get('epoch')}" for n, f in picks.items())
    return (
        f" Each fold model is scored at the epoch chosen on the *other* fold's held-out curve ({which}), so the "
        "images it is scored on played no part in choosing it (the shipped model's epoch was chosen on both)."
    )


def model_card(
    run: Path,
    metrics: dict[str, Any],
    config: dict[str, Any],
    crossval: dict[str, Any] | None,
    credits: str,
    onnx_facts: dict[str, Any],
    generalization: dict[str, Any] | None = None,
) -> str:
    from covidxray import NOT_FOR_CLINICAL_USE

    classes = config["classes"]
    training = config.get("training", {})
    data = config.get("data", {})
    op = metrics.get("operating_point", {})
    probe = metrics.get("probe", {})
    head = (
        "| data | images | accuracy | macro ROC AUC | " + " | ".join(f"{c} ROC AUC" for c in classes) + " |"
    )
    sep = "|" + "---|" * (4 + len(classes))
    rows = [metrics_rows("test, all sources", metrics["overall"], classes)]
    rows += [metrics_rows(f"test, {s}", g, classes) for s, g in metrics["per_source"].items()]
    if metrics.get("adults"):  # children (a pediatric collection, its copies, age < 18) left out
        rows.append(metrics_rows("test, adults only", metrics["adults"]["group"], classes))
    pre = config["preprocessing"]
    lines = [
        "# Model card: covidxray default model",
        "",
        f"> **{NOT_FOR_CLINICAL_USE}** It must not be used for screening, triage or diagnosis of any person.",
        "",
        "Every figure below is written by `tools/ship_default_model.py` from the files of the run it ships "
        f"(`{run}`): `evaluation/metrics.json` (`covidxray evaluate`) and the leave-one-source-out JSON "
        "(`covidxray crossval`). 95% intervals: bootstrap over patients.",
        "",
        "## Model",
        "",
        f"- Architecture: `{config['architecture']['name']}` {config['architecture'].get('kwargs', {})}, "
        f"{metrics['model']['parameters']:,} parameters; classes {classes} (softmax).",
        f"- Input: {pre['channels']}-channel {pre['image_size']}x{pre['image_size']} grey image, resize "
        f"`{pre['resize']}`, intensity `{pre['intensity']}` (the preprocessing is stored in `config.json` and in the "
        "ONNX metadata; `covidxray.preprocess.Preprocessing` applies it).",
        f"- Training: {training.get('epochs_run', '?')} epochs of {training.get('epoch_samples') or 'all'} images "
        f"({training.get('train_seconds', 0) / 60:.1f} min on a 2-core CPU, {training.get('threads') or 2} torch "
        f"thread(s)), weight initialisation `{training.get('init', 'default')}`, optimizer "
        f"{_optimizer_words(training)}, lr {training.get('lr')}, augmentation `{training.get('augment')}`, "
        f"sampler `{training.get('sampler')}` "
        f"(every label equally likely; within a label sources weighted by "
        f"{_source_share_words(training.get('source_power', 0.5))}); kept "
        f"{'weights' if training.get('averaged_epochs') else 'epoch ' + str(training.get('best_epoch'))}, "
        f"{_selection_words(training)}. Recipe: `covidxray run` "
        "(`covidxray.pipeline.DEFAULT_RECIPE`).",
        f"- Files: `src/covidxray/default_model/` = `model.safetensors` + `config.json` (covidxray bundle format "
        f"{config.get('format_version')}) + `model.onnx` (opset {onnx_facts.get('opset', '?')}, ONNX Runtime "
        f"agrees with PyTorch to {onnx_facts.get('max_abs_diff', float('nan')):.1e} in probability).",
        "",
        "## Data",
        "",
        f"Manifest sha1 `{data.get('manifest_sha1', '?')}`, built by `covidxray data build --root ../shared/data`: "
        "patient-level 70/15/15 split stratified by label and source; exact and near duplicates grouped and never "
        "split. Images per split, source and label used for training:",
        "",
        "```",
        json.dumps(data.get("counts", {}), indent=1)[:3000],
        "```",
        "",
        "### Sources and licences",
        "",
        "```",
        credits.strip(),
        "```",
        "",
        "## Results on the held-out test split",
        "",
        head,
        sep,
        *rows,
        "",
        f"Calibration: expected calibration error {ci(metrics['overall']['ece'])} (all sources).",
        "",
    ]
    ops = metrics.get("operating_points", {})
    if ops.get("points"):
        lines += [
            "Every prediction of `covidxray predict`, the web page and the API names the operating point that "
            "decided and shows p(covid) beside its threshold (the points are in the bundle and the ONNX metadata).",
            "",
            *operating_points_markdown(ops),
            "",
            *adults_points_markdown(metrics.get("adults")),
        ]
    elif "threshold" in op:
        lines += [
            f"Operating point (stored in the bundle and used by `covidxray predict` and the web app): predict "
            f"`{op['class']}` when p({op['class']}) >= {op['threshold']:.4f}, the threshold reaching sensitivity "
            f"{op['target_sensitivity']:.2f} on the validation split. On test: sensitivity "
            f"{ci(op['test']['sensitivity'])}, specificity {ci(op['test']['specificity'])}.",
            "",
        ]
    if probe.get("balanced_accuracy") is not None:
        lines += [
            f"Shortcut probe: a linear classifier on the model's penultimate features tells the source collection "
            f"with balanced accuracy {probe['balanced_accuracy']:.3f} (chance {probe['chance']:.3f}; the diagnosis "
            f"alone gives {probe['label_only_baseline']:.3f}). The features carry where an image came from.",
            "",
        ]
    if metrics.get("warnings"):
        lines += ["Warnings from the evaluation:", ""] + [f"- {w}" for w in metrics["warnings"]] + [""]
    if crossval:
        lines += [
            "## Across sources (leave-one-source-out)",
            "",
            f"Architecture `{crossval.get('model')}`"
            + (
                f" (not the shipped `{config['architecture']['name']}`: CPU time here allowed the three folds "
                "of one architecture; expect the same pattern)"
                if crossval.get("model") != config["architecture"]["name"]
                else ""
            )
            + " trained on all but one source with the recipe of the command below, then tested on the "
            "in-source test split and on every image of the held-out source "
            f"(`{crossval.get('command', 'covidxray crossval')}`).",
            "",
            "| held-out source | out-of-source images | macro AUC in-source | macro AUC out-of-source | "
            "covid AUC in-source | covid AUC out-of-source |",
            "|---|---|---|---|---|---|",
        ]
        for f in crossval.get("folds", []):
            macro, covid = f["macro_roc_auc"], f["roc_auc"].get("covid", {})
            lines.append(
                f"| {f['held_out_source']} | {f['n_images_out']} | {ci(macro['in_source'])} | "
                f"{ci(macro['out_of_source'])} | {ci(covid.get('in_source'))} | "
                f"{ci(covid.get('out_of_source'))} |"
            )
        notes = [n for f in crossval.get("folds", []) for n in f.get("notes", [])]
        lines += [""] + [f"- {n}" for n in notes]
        lines.append("")
    if generalization:
        g, folds = generalization, generalization.get("folds", {})
        # the rule `covidxray run` decides with (travel_level); older rows only have the probability rule
        level_rule = bool(folds) and all(f.get("travel_level") for f in folds.values())
        point = (
            "in-source COVID sensitivity level chosen on the other fold (each fold model at its own threshold for "
            "it, as `covidxray run` chooses the deciding point)"
            if level_rule
            else "threshold chosen on the other fold"
        )
        lines += [
            "## Out of source: this recipe's leave-one-source-out folds",
            "",
            "The same recipe trained by `covidxray run` once per source with COVID-19 held out (the folds its "
            "operating points, and its epoch when one is chosen, were chosen on), scored on every image of the source it never saw "
            f'(`benchmarks/generalization.py {g.get("row", "")}`; BENCHMARKS.md, "Generalization ablation"). '
            "This, not the test split above, is what to expect at another hospital." + _nested_words(folds),
            "",
            "| held-out source | COVID ROC AUC out of source | sensitivity / specificity there at the "
            + point
            + " | JSRT adults (no COVID-19) called COVID-19 by the fold model there |",
            "|---|---|---|---|",
        ]
        for name, f in folds.items():
            t = (f.get("travel_level") if level_rule else f.get("travel")) or {}
            rates = f"{t['sensitivity']:.2f} / {t['specificity']:.2f}" if t else "n/a"
            if level_rule:
                rates += f" (level {t['level']:.2f})"
            jsrt = t.get("jsrt_covid_share") if level_rule else f.get("jsrt_covid_share")
            lines.append(
                f"| {name} | {ci(f.get('auc_out'))} | {rates} | {'n/a' if jsrt is None else f'{jsrt:.0%}'} |"
            )
        a = g.get("all", {})
        lines += [
            "",
            f"Mean out-of-source COVID AUC {g.get('mean_auc_out', float('nan')):.3f}. "
            + (
                f"The shipped model calls {a['jsrt_covid_share_balanced']:.0%} of the 247 JSRT adults (Japan; none has "
                "COVID-19, never used in training) COVID-19 at its deciding point. "
                if a.get("jsrt_covid_share_balanced") is not None
                else ""
            )
            + "The issue's goal (mean >= 0.85, sensitivity and specificity >= 0.85 on a held-out source) is not "
            "met.",
            "",
        ]
    lines += [
        "## Intended use",
        "",
        config.get("intended_use", ""),
        "",
        "## Limitations",
        "",
        "- COVID-19 images come from two collections (covid-chestxray-dataset: publication figures, often with "
        "arrows and text; COVID-19 Radiography Database) and most pneumonia images from one pediatric hospital "
        "(Kermany, children aged 1-5). Labels are therefore confounded with source, age and file format; the "
        "shortcut probe and the leave-one-source-out table above measure how much the model relies on that. "
        "Expect lower performance on X-rays from other hospitals than on this test split.",
        "- Labels are the collections' own (image-level, partly from publications), not a reference standard; "
        "'pneumonia' mixes bacterial and viral pediatric pneumonia with adult lung opacity.",
        "- Trained from scratch on about 7,000 images at low resolution on a CPU; no ImageNet or chest X-ray "
        "pretraining was used.",
        "- The input guard flags colour photographs, documents, tiny images, images far from the training "
        "distribution in feature space, images without plausible lung fields and, with a separate view check "
        "(`src/covidxray/default_view/`), lateral views (about 98 % of covid-chestxray-dataset's lateral views in "
        "patient-grouped cross-validation together with the lung check), but cannot guarantee that an image is a "
        "frontal chest X-ray.",
        "- Grad-CAM heatmaps show where the network's evidence is, not where disease is; they often highlight "
        "text, markers or borders, which is itself a sign of shortcut learning.",
        "",
    ]
    return "\n".join(lines)


def note_blocks(text: str) -> dict[str, str]:
    """The blocks of a notes file: ``<!-- name -->`` on a line of its own starts block ``name``."""
    blocks: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("<!--") and stripped.endswith("-->"):
            name = stripped[4:-3].strip()
            blocks[name] = []
        elif name is not None:
            blocks[name].append(line)
    return {k: "\n".join(v).strip() for k, v in blocks.items()}


def insert_notes(card: str, notes: Path | None) -> str:
    """``card`` with the notes' ``out-of-source`` block after the leave-one-source-out section's last paragraph
    and its ``limitations`` block after the first limitation (unknown block names are refused)."""
    if notes is None or not notes.is_file():
        return card
    blocks = note_blocks(notes.read_text())
    unknown = set(blocks) - {"out-of-source", "limitations"}
    if unknown:
        raise SystemExit(f"{notes}: unknown block(s) {sorted(unknown)}; use out-of-source and limitations")
    if blocks.get("out-of-source"):
        anchor = "## Intended use"
        if anchor not in card:
            raise SystemExit(
                f"{notes}: the card has no '{anchor}' section to put the out-of-source notes before"
            )
        card = card.replace(anchor, blocks["out-of-source"] + "\n\n" + anchor, 1)
    if blocks.get("limitations"):
        head = card.index("## Limitations")
        first = card.index("\n- ", head)
        end = card.index("\n- ", first + 1)
        card = card[:end] + "\n" + blocks["limitations"] + card[end:]
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="run folder with model/ and evaluation/metrics.json")
    ap.add_argument("--manifest", type=Path, default=REPO / "runs/data/manifest.csv")
    ap.add_argument("--crossval", type=Path, help="crossval.json of covidxray crossval")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "runs/cache")
    ap.add_argument(
        "--generalization",
        metavar="ROW",
        help="row of benchmarks/results/generalization.json holding this recipe's leave-one-source-out folds",
    )
    ap.add_argument(
        "--notes",
        type=Path,
        default=REPO / "docs" / "model_card_notes.md",
        help="hand-written blocks of the card (<!-- out-of-source -->, <!-- limitations -->)",
    )
    args = ap.parse_args()

    from covidxray.bundle import read_config
    from covidxray.data.credits import format_credits
    from covidxray.data.manifest import read_manifest
    from covidxray.prediction.export import export_onnx
    from covidxray.prediction.guard import fit_guard_on_split

    bundle = args.run / "model"
    metrics = json.loads((args.run / "evaluation" / "metrics.json").read_text())
    if not read_config(bundle).guard:
        fit_guard_on_split(bundle, read_manifest(args.manifest), args.cache_dir, split="train")
    onnx, facts_file = bundle / "model.onnx", args.run / "onnx_export.json"
    if (
        onnx.exists()
        and facts_file.exists()
        and onnx.stat().st_mtime >= (bundle / "config.json").stat().st_mtime
    ):
        facts = json.loads(facts_file.read_text())  # up to date: keep the same file (and its bytes in git)
    else:
        facts = export_onnx(bundle, onnx)
        facts_file.write_text(json.dumps(facts, indent=2, default=str))
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(bundle / name, DEFAULT_DIR / name)
    config = json.loads((bundle / "config.json").read_text())
    crossval = json.loads(args.crossval.read_text()) if args.crossval else None
    credits = format_credits(read_manifest(args.manifest))
    gen = None
    if args.generalization:
        gen = json.loads((REPO / "benchmarks/results/generalization.json").read_text())[args.generalization]
    card = insert_notes(model_card(args.run, metrics, config, crossval, credits, facts, gen), args.notes)
    seg_config = REPO / "src" / "covidxray" / "default_segmenter" / "config.json"
    if seg_config.is_file():  # the shipped lung segmenter's section (tools/ship_segmenter.py)
        from ship_segmenter import replace_section, segmenter_section

        onnx_bytes = (seg_config.parent / "model.onnx").stat().st_size
        card = replace_section(card, segmenter_section(json.loads(seg_config.read_text()), onnx_bytes))
    (REPO / "MODEL_CARD.md").write_text(card)
    size = sum((DEFAULT_DIR / n).stat().st_size for n in FILES)
    print(f"shipped {bundle} -> {DEFAULT_DIR} ({size / 1e6:.1f} MB); wrote {REPO / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
