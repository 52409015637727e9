"""Leave-one-source-out: the in-/out-of-source table, and ``covidxray crossval`` on tiny data for 1 epoch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidxray import NOT_FOR_CLINICAL_USE
from covidxray.evaluation.crossval import crossval_report, fold_dir, fold_summary
from covidxray.evaluation.document import fmt
from covidxray.evaluation.metrics_json import EvaluationOptions, evaluate_predictions

CLASSES = ["covid", "normal", "pneumonia"]


def _metrics(labels: list[str], source: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.repeat(labels, 2)
    y = np.array([CLASSES.index(lab) for lab in labels])
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    patients = [f"{source}{i // 2}" for i in range(len(y))]
    return evaluate_predictions(labels, probs, CLASSES, patients, [source] * len(y), None,
                                EvaluationOptions(n_resamples=100))  # fmt: skip


def test_fold_summary_states_missing_classes():
    in_source = _metrics(["covid", "normal", "pneumonia"] * 15, "others", seed=0)
    out_of_source = _metrics(["normal", "pneumonia"] * 15, "kermany", seed=1)  # no covid there
    fold = fold_summary("kermany", in_source, out_of_source)
    assert fold["macro_roc_auc"]["in_source"] == in_source["overall"]["macro"]["roc_auc"]
    assert fold["roc_auc"]["covid"]["out_of_source"]["value"] is None
    assert (
        fold["roc_auc"]["normal"]["out_of_source"]
        == out_of_source["overall"]["per_class"]["normal"]["roc_auc"]
    )
    assert fold["n_images_out"] == 60 and fold["label_counts_out"]["covid"] == 0
    assert (
        len(fold["notes"]) == 1
        and "kermany: out-of-source AUC undefined for covid (no covid images)" in fold["notes"][0]
    )
    fold["run_dir"] = "runs/cv/holdout-kermany"
    md = crossval_report(
        {"model": "seed_cnn2", "folds": [fold], "command": "covidxray crossval --all"}
    ).to_markdown()
    row = next(line for line in md.splitlines() if line.startswith("| kermany | 60 |"))
    macro = fold["macro_roc_auc"]["out_of_source"]
    assert fmt(macro["value"], macro["ci"]) in row and "n/a (no covid images)" in row
    assert NOT_FOR_CLINICAL_USE in md and "covidxray crossval --all" in md


def test_fold_dir_is_a_safe_folder_name(tmp_path):
    assert fold_dir(tmp_path, "covid-chestxray-dataset").name == "holdout-covid-chestxray-dataset"
    assert fold_dir(tmp_path, "a/b c").name == "holdout-a_b_c"


# (source, label, split, patients): 'gamma' has every label so each fold still trains on all three classes.
LAYOUT = [
    (source, label, split, n)
    for source, labels in (
        ("alpha", ("covid", "pneumonia")),
        ("beta", ("normal", "pneumonia")),
        ("gamma", ("covid", "normal", "pneumonia")),
    )  # fmt: skip
    for label in labels
    for split, n in (("train", 3), ("val", 2), ("test", 2))
]


def test_crossval_command_one_epoch(tmp_path, capsys):
    from covidxray.cli import main
    from test_evaluation_end_to_end import write_manifest

    root = tmp_path / "data"
    root.mkdir()
    manifest = write_manifest(root, layout=LAYOUT, images_per_patient=1)
    out = tmp_path / "cv"
    argv = ["crossval", "--model", "seed_cnn2", "--manifest", str(manifest), "--holdout-source", "beta",
            "--out", str(out), "--epochs", "1", "--image-size", "32", "--cache-dir", str(tmp_path / "cache"),
            "--bootstrap", "50", "--no-probe"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "crossval.json").read_text())
    (fold,) = result["folds"]
    assert fold["held_out_source"] == "beta" and fold["n_images_out"] == 2 * (3 + 2 + 2)
    assert fold["roc_auc"]["covid"]["out_of_source"]["value"] is None  # beta has no covid
    assert fold["roc_auc"]["normal"]["out_of_source"]["value"] is not None
    assert fold["in_source_sources"] == ["alpha", "gamma"]
    run = json.loads((fold_dir(out, "beta") / "run.json").read_text())
    assert run["config"]["holdout_source"] == "beta"
    assert "beta" in capsys.readouterr().out and (out / "crossval.html").is_file()


def test_crossval_offers_every_training_option_with_its_choices(tmp_path):
    from dataclasses import fields

    from covidxray.cli import build_parser
    from covidxray.evaluation.cli import CROSSVAL_TRAIN_FIELDS, train_options
    from covidxray.training.config import TrainConfig

    parser = build_parser()
    base = ["crossval", "--model", "seed_cnn2", "--manifest", "m.csv", "--all"]
    names = {f.name for f in fields(TrainConfig)} - {
        "manifest",
        "model",
        "out",
        "holdout_source",
        "cache_dir",
    }
    assert set(CROSSVAL_TRAIN_FIELDS) == names - {"progress"}
    config = tmp_path / "fold.yaml"
    config.write_text("epochs: 3\nintensity: minmax\n")
    args = parser.parse_args(
        [
            *base,
            "--config",
            str(config),
            "--epochs",
            "2",
            "--resize",
            "pad",
            "--channels",
            "3",
            "--train-seed",
            "4",
        ]
    )
    assert train_options(args) == {
        "epochs": 2,
        "intensity": "minmax",
        "resize": "pad",
        "channels": 3,
        "seed": 4,
    }
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--optimizer", "adamw"])  # choices, not help text


def test_fold_summary_carries_the_held_out_adults():
    in_source = _metrics(["covid", "normal", "pneumonia"] * 15, "others", seed=0)
    out_of_source = _metrics(["covid", "normal", "pneumonia"] * 15, "radiography", seed=1)
    adults = _metrics(["covid", "normal", "pneumonia"] * 10, "radiography", seed=2)["overall"]
    out_of_source["adults"] = {"group": adults, "n_images": 30, "children_left_out": {"radiography": 15}}
    fold = fold_summary("radiography", in_source, out_of_source)
    assert fold["roc_auc_out_adults"]["covid"] == adults["per_class"]["covid"]["roc_auc"]
    fold["run_dir"] = "runs/cv/holdout-radiography"
    no_children = dict(fold_summary("cohen", in_source, _metrics(["covid", "normal"] * 15, "cohen", seed=3)))
    no_children["run_dir"] = "runs/cv/holdout-cohen"
    assert no_children["roc_auc_out_adults"] is None
    md = crossval_report({"model": "seed_cnn6", "folds": [fold, no_children]}).to_markdown()
    auc = adults["per_class"]["covid"]["roc_auc"]
    row = next(
        line for line in md.splitlines() if line.startswith(f"| radiography | {fold['n_images_out']} |")
    )
    assert row.rstrip(" |").endswith(fmt(auc["value"], auc["ci"]))
    row = next(
        line for line in md.splitlines() if line.startswith(f"| cohen | {no_children['n_images_out']} |")
    )
    assert "n/a (the held-out images hold no child, or nothing but children)" in row
