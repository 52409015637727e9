"""`covidxray run`: the whole main job on a tiny made-up collection, then again with every step up to date."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import xray_like

from covidxray import NOT_FOR_CLINICAL_USE
from covidxray.cli import main
from covidxray.pipeline import Steps, root_fingerprint


def _tree(root: Path, per_class: int = 10) -> Path:
    """Two folder-per-class collections (two sources, both with COVID-19, so leave-one-source-out has two folds)
    whose classes differ in brightness, so a model can learn something."""
    for j, name in enumerate(("tiny", "other")):
        for k, cls in enumerate(("covid", "normal", "pneumonia")):
            (root / name / cls).mkdir(parents=True)
            for i in range(per_class):
                img = xray_like(72, seed=1000 * j + 100 * k + i).astype(np.float32) * (0.6 + 0.2 * k)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                    root / name / cls / f"{cls}_{i}.png"
                )
    return root


def test_steps_skip_when_inputs_are_unchanged(tmp_path: Path) -> None:
    out, calls = tmp_path / "out.txt", []

    def step() -> None:
        calls.append(1)
        out.write_text("x")

    steps = Steps(tmp_path / "stamps")
    assert steps.run("s", {"a": 1}, out, step) and not steps.run("s", {"a": 1}, out, step)
    assert steps.run("s", {"a": 2}, out, step)  # changed input
    out.unlink()
    assert steps.run("s", {"a": 2}, out, step)  # missing output
    assert Steps(tmp_path / "stamps", force=True).run("s", {"a": 2}, out, step)
    assert len(calls) == 4


def test_root_fingerprint_changes_with_any_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"1")
    before = root_fingerprint(tmp_path)
    assert root_fingerprint(tmp_path) == before
    (tmp_path / "a" / "y.png").write_bytes(b"2")
    assert root_fingerprint(tmp_path) != before


def test_run_builds_trains_evaluates_then_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, out = _tree(tmp_path / "data"), tmp_path / "runs"
    args = [
        "run",
        "--root",
        str(root),
        "--out",
        str(out),
        "--model",
        "seed_cnn2",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--workers",
        "1",
        "--average-from",
        "0",  # the epoch-choosing form (the recipe's own averaging has its test below)
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "macro AUC" in text and NOT_FOR_CLINICAL_USE in text
    metrics = json.loads((out / "default" / "evaluation" / "metrics.json").read_text())
    assert metrics["data"]["split"] == "test" and metrics["overall"]["n_images"] > 0
    config = json.loads((out / "default" / "model" / "config.json").read_text())
    assert config["guard"] and (out / "default" / "model" / "model.onnx").is_file()
    assert (out / "default" / "evaluation" / "report.html").is_file()
    # operating points chosen on the two fold models' predictions of the source each never saw, kept by evaluate
    assert config["decision"] == "balanced" and set(config["operating_points"]) == {"screening", "balanced"}
    chosen = config["operating_points"]["balanced"]["chosen_on"]
    assert "leave-one-source-out" in chosen["description"] and chosen["n_images"] == 60
    for fold in ("other", "tiny"):
        run = json.loads((out / "loso" / fold / "run.json").read_text())
        assert run["config"]["holdout_source"] == fold
    assert "kept" in metrics["operating_points"]
    # the balanced point decides for the default model at the threshold that gives it the in-source
    # sensitivity the fold models had at their pooled threshold (carried as a rank, not as a probability)
    points = json.loads((out / "loso" / "points.json").read_text())
    carried = config["operating_points"]["balanced"]["carried"]
    assert carried["fold_threshold"] == points["balanced"]["threshold"]
    # chosen fold by fold: each fold's own threshold for the level, the mean of their held-out figures
    per_fold = points["balanced"]["per_fold"]
    assert set(per_fold) == {"other", "tiny"} and carried["per_fold"] == per_fold
    assert points["balanced"]["sensitivity"]["value"] == pytest.approx(
        sum(f["sensitivity"] for f in per_fold.values()) / 2
    )
    assert "each fold counted once" in config["operating_points"]["balanced"]["chosen_on"]["description"]
    assert carried["in_source_sensitivity"] == points["balanced"]["in_source_sensitivity"]
    assert carried["validation"]["sensitivity"] >= carried["in_source_sensitivity"]
    assert "sensitivity" not in config["operating_points"]["balanced"]  # those were the fold threshold's
    assert (out / "loso" / "in_source_val.csv").is_file()
    assert config["operating_points"]["screening"]["threshold"] == points["screening"]["threshold"]
    # the epoch was chosen on the folds' held-out curves, and both the folds and the default model keep it
    selection = json.loads((out / "loso" / "selection.json").read_text())
    assert selection["epoch"] == 1 and set(selection["curves"]) == {"other", "tiny"}
    assert config["training"]["selected_by"] == "select_epoch 1"
    assert "each at epoch 1" in chosen["description"]
    fold_config = json.loads((out / "loso" / "tiny" / "model" / "config.json").read_text())
    assert fold_config["training"]["selected_by"].startswith("select_epoch 1: highest mean")

    assert main(args) == 0
    again = capsys.readouterr().out
    for step in ("manifest", "train", "loso", "guard", "evaluate", "export"):
        assert f"[{step}] up to date" in again


def test_run_with_weight_averaging_keeps_the_average_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recipe averages its weights (``average_from``, the default's 11; ``--average-from`` here 2): no epoch
    is chosen; the folds (for the points) and the default model keep the average of the weights of epochs 2 to
    the last, and the record says so."""
    from covidxray import pipeline

    assert pipeline.DEFAULT_RECIPE["average_from"] == 11
    root, out = _tree(tmp_path / "data", per_class=6), tmp_path / "runs"
    args = ["run", "--root", str(root), "--out", str(out), "--model", "seed_cnn6", "--image-size", "32",
            "--epochs", "3", "--workers", "1", "--average-from", "2"]  # fmt: skip
    assert main(args) == 0
    assert "each the average of epochs 2-3; operating points" in capsys.readouterr().out
    selection = json.loads((out / "loso" / "selection.json").read_text())
    assert selection["epoch"] == 0 and selection["averaged_epochs"] == [2, 3]
    assert set(selection["averaged_holdout_auc_covid"]) == {"other", "tiny"}
    config = json.loads((out / "default" / "model" / "config.json").read_text())
    assert config["training"]["averaged_epochs"] == [2, 3] and config["training"]["epochs_run"] == 3
    assert (
        "each the average of epochs 2-3" in config["operating_points"]["balanced"]["chosen_on"]["description"]
    )
    for fold in ("other", "tiny"):
        run = json.loads((out / "loso" / fold / "run.json").read_text())
        assert run["averaged_epochs"] == [2, 3] and run["averaged_holdout"]["holdout_auc_covid"] is not None


def test_averaging_text_names_each_fold_when_they_differ() -> None:
    from covidxray.pipeline import averaging_text

    assert averaging_text({"epoch": 3}) == ""  # the recipe does not average
    same = {"averaged_epochs": [11, 20], "averaged_epochs_by_fold": {"a": [11, 20], "b": [11, 20]}}
    assert averaging_text(same) == "each the average of epochs 11-20"
    differ = {"averaged_epochs": None, "averaged_epochs_by_fold": {"a": [11, 20], "b": None}}
    assert averaging_text(differ) == "a: average of epochs 11-20; b: not averaged (stopped early)"


def test_run_reports_a_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "runs")]) == 3
    assert "is not a folder" in capsys.readouterr().err


def test_choose_epoch_takes_the_best_smoothed_mean_over_folds() -> None:
    from covidxray.pipeline import choose_epoch

    # fold a peaks alone at epoch 2 (a spike), both folds are high together around epoch 4
    curves = {"a": [0.5, 0.9, 0.5, 0.7, 0.7, 0.7, 0.5], "b": [0.5, 0.5, 0.6, 0.8, 0.8, 0.7, 0.6, 0.9]}
    sel = choose_epoch(curves)
    assert sel["epoch"] == 5 and len(sel["mean_smoothed_curve"]) == 7  # only epochs both folds reached
    assert sel["mean_smoothed_curve"][4] == pytest.approx((0.7 + 0.7 + 0.7 + 0.8 + 0.8 + 0.7) / 6, abs=1e-4)
    assert choose_epoch({"a": [0.5, 0.9, 0.5]}, smooth=1)["epoch"] == 2
    assert choose_epoch({"a": [0.6, None]})["epoch"] == 0  # an undefined AUC: keep the best on validation
    assert choose_epoch({})["epoch"] == 0


def test_fold_balanced_point_balances_every_fold_in_the_unit_it_is_carried_in() -> None:
    import numpy as np
    import pandas as pd

    from covidxray.evaluation.operating_point import choose_operating_points
    from covidxray.pipeline import fold_balanced_point

    rng = np.random.default_rng(0)

    def fold(name: str, n_held: int, shift: float, n_val: int = 200) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One fold: scores on its own probability scale (``shift``), the same ranking quality in and out of
        source for the positives, negatives of the held-out source harder than the in-source ones."""

        def part(n: int, neg_mean: float) -> pd.DataFrame:
            y = rng.random(n) < 0.4
            z = np.where(y, rng.normal(1.0, 1.0, n), rng.normal(neg_mean, 1.0, n))
            return pd.DataFrame(
                {"label": np.where(y, "covid", "normal"), "p": 1 / (1 + np.exp(-(z + shift))), "fold": name}
            )

        return part(n_held, 0.0), part(n_val, -2.0)

    (held_a, val_a), (held_b, val_b) = fold("a", 300, -1.5), fold("b", 3000, 1.5)
    pool, val = pd.concat([held_a, held_b]), pd.concat([val_a, val_b])
    point = fold_balanced_point(pool, val)
    assert set(point["per_fold"]) == {"a", "b"} and point["per_fold"]["b"]["n_images"] == 3000
    # each fold at its own threshold: both are near their own balance, on their own scales
    for f in point["per_fold"].values():
        assert (
            abs(f["sensitivity"] - f["specificity"]) < 0.15 and min(f["sensitivity"], f["specificity"]) > 0.6
        )
    assert point["per_fold"]["a"]["threshold"] < 0.5 < point["per_fold"]["b"]["threshold"]
    assert point["sensitivity"]["value"] == pytest.approx(
        np.mean([f["sensitivity"] for f in point["per_fold"].values()])
    )
    assert 0 < point["in_source_sensitivity"] <= 1 and point["threshold"] == pytest.approx(
        np.mean([f["threshold"] for f in point["per_fold"].values()])
    )
    # the pooled probability is set by the larger fold and leaves the smaller one far off balance
    pooled = choose_operating_points((pool["label"] == "covid").to_numpy(), pool["p"].to_numpy())["balanced"]
    y_a = (held_a["label"] == "covid").to_numpy()
    sens_a = (held_a["p"].to_numpy()[y_a] >= pooled["threshold"]).mean()
    assert sens_a < 0.3
    # nothing to choose on: no fold with COVID-19 in its validation rows
    assert fold_balanced_point(pool, val.assign(label="normal")) is None


def test_carry_balanced_point_moves_only_the_balanced_threshold(tmp_path: Path, tiny_bundle: Path) -> None:
    from covidxray.data.manifest import build_manifest, read_manifest
    from covidxray.pipeline import carry_balanced_point

    manifest = build_manifest(_tree(tmp_path / "data"), out=tmp_path / "manifest.csv", seed=0, workers=1)
    df = read_manifest(manifest)
    pooled = {"description": "pooled out-of-source predictions", "n_images": 40}
    points = {
        "screening": {"class": "covid", "threshold": 0.1, "rule": "sensitivity>=0.95", "chosen_on": pooled},
        "balanced": {
            "class": "covid",
            "threshold": 0.5,
            "threshold_ci": [0.4, 0.6],
            "rule": "max min(sensitivity,specificity)",
            "chosen_on": pooled,
            "in_source_sensitivity": 0.5,
            "sensitivity": {"value": 0.6},
            "specificity": {"value": 0.7},
        },
    }
    out = carry_balanced_point(tiny_bundle, df, tmp_path / "cache", points)
    b = out["balanced"]
    assert out["screening"] == points["screening"] and points["balanced"]["threshold"] == 0.5  # input kept
    assert b["carried"]["fold_threshold"] == 0.5 and b["carried"]["fold_threshold_ci"] == [0.4, 0.6]
    assert b["carried"]["out_of_source_at_fold_point"] == {
        "sensitivity": {"value": 0.6},
        "specificity": {"value": 0.7},
    }
    assert (
        "sensitivity" not in b
        and "threshold_ci" not in b
        and "carried to this model" in b["chosen_on"]["description"]
    )
    # a threshold that reaches the target sensitivity on the validation split
    val = b["carried"]["validation"]
    assert val["sensitivity"] >= 0.5 and 0.0 <= b["threshold"] <= 1.0
    # without COVID-19 in the validation split there is nothing to carry the rank on: the points stay as they are
    no_covid = df[~((df["split"] == "val") & (df["label"] == "covid"))].reset_index(drop=True)
    no_covid.attrs = dict(df.attrs)
    assert carry_balanced_point(tiny_bundle, no_covid, tmp_path / "cache", points) is points
    # nor when the fold models reached no in-source COVID-19 at the pooled threshold (sensitivity 0 or unknown)
    for nothing in (0.0, None):
        flat = {**points, "balanced": {**points["balanced"], "in_source_sensitivity": nothing}}
        assert carry_balanced_point(tiny_bundle, df, tmp_path / "cache", flat) is flat
