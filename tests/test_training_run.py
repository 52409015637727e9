"""Whole runs on tiny made-up data: outputs, the saved bundle, determinism, the binary BCE task, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from covidxray.bundle import load_bundle
from covidxray.cli import main
from covidxray.data.manifest import read_manifest
from covidxray.errors import EXIT_INPUT, EXIT_USAGE
from covidxray.training.config import TrainConfig
from covidxray.training.trainer import train
from test_training_data import make_manifest

TIMING = ("seconds", "images_per_s")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("tiny"))


def _cfg(manifest: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        manifest=str(manifest), model="seed_cnn2", out=str(out), epochs=2, image_size=32, batch_size=8,
        cache_dir=str(manifest.parent / "cache"), threads=1, progress=False, checkpoint_every=0,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _history(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_run_writes_every_output_and_is_reproducible(manifest: Path, tmp_path: Path) -> None:
    run = train(_cfg(manifest, tmp_path / "a"))
    again = train(_cfg(manifest, tmp_path / "b"))
    assert _history(run) == _history(again)  # same seed, same data -> same numbers

    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [1, 2] and history["val_auc_macro"].notna().all()
    assert (run / "curves.png").stat().st_size > 1000 and (run / "checkpoints" / "last.pt").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_run"] == 2 and info["best_epoch"] in (1, 2)

    bundle = load_bundle(run / "model")
    c = bundle.config
    assert c.architecture == "seed_cnn2" and c.architecture_kwargs == {"image_size": 32}
    assert c.classes == ["covid", "normal", "pneumonia"] and c.preprocessing.image_size == 32
    assert c.training["epochs_run"] == 2 and c.training["best_epoch"] == info["best_epoch"]
    assert c.data["manifest_sha1"] == read_manifest(manifest).attrs["manifest_sha1"]
    assert c.data["counts"]["train"]["a"] == {"covid": 6, "normal": 6, "pneumonia": 6}
    best = history.iloc[info["best_epoch"] - 1]
    assert c.metrics["val"]["val_auc_macro"] == pytest.approx(best["val_auc_macro"])
    probs = bundle.model.probabilities(torch.rand(2, 1, 32, 32))
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(1), torch.ones(2))


def test_bce_task_has_one_output_for_the_second_class(manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(manifest, tmp_path / "bce", epochs=1, classes="covid,normal", loss="bce", optimizer="rmsprop",
               augment="seed002", sampler="shuffle")  # fmt: skip
    bundle = load_bundle(train(cfg) / "model")
    assert bundle.config.num_outputs == 1 and bundle.config.classes == ["covid", "normal"]
    assert bundle.config.data["counts"]["train"]["b"] == {"covid": 6, "normal": 6}
    x = torch.rand(3, 1, 32, 32)
    p_normal = torch.sigmoid(bundle.model(x))[:, 0]
    assert torch.allclose(bundle.model.probabilities(x)[:, 1], p_normal)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--manifest", "{tmp}/nope.csv"], EXIT_INPUT, "manifest '{tmp}/nope.csv' not found"),
        (["--model", "resnet7"], EXIT_USAGE, "unknown model 'resnet7'"),
        (["--classes", "covid,flu"], EXIT_USAGE, r"unknown class name(s) ['flu']"),
        (["--resume", "{tmp}/nothing"], EXIT_INPUT, "no checkpoint at {tmp}/nothing/checkpoints/last.pt"),
        (["--holdout-source", "a", "--classes", "covid,normal", "--manifest", "{empty}"], EXIT_INPUT,
         "train split has no rows"),
    ],
)  # fmt: skip
def test_cli_refuses_bad_input_with_a_specific_message(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], code: int, message: str
) -> None:
    empty = tmp_path / "empty.csv"
    df = pd.read_csv(manifest)
    df.loc[df["source"] == "b", "split"] = "test"
    df.to_csv(empty, index=False)
    fill = {"tmp": str(tmp_path), "empty": str(empty)}
    argv = ["train", "--manifest", str(manifest), "--out", str(tmp_path / "run"), "--no-progress"]
    argv += [a.format(**fill) for a in args]
    assert main(argv) == code
    assert message.format(**fill) in capsys.readouterr().err


def test_cli_init_flag_reinitialises_and_is_recorded(manifest: Path, tmp_path: Path) -> None:
    argv = ["train", "--manifest", str(manifest), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress",
            "--cache-dir", str(manifest.parent / "cache")]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "glorot"), "--init", "glorot"]) == 0
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    info = json.loads((tmp_path / "glorot" / "run.json").read_text())
    assert info["config"]["init"] == "glorot"
    assert load_bundle(tmp_path / "glorot" / "model").config.training["init"] == "glorot"
    assert _history(tmp_path / "glorot") != _history(tmp_path / "default")  # other starting weights
    with pytest.raises(SystemExit) as exc:  # argparse: exit 2 and the valid choices on stderr
        main([*argv, "--out", str(tmp_path / "bad"), "--init", "lecun"])
    assert exc.value.code == EXIT_USAGE
