"""Source-adversarial training and acquisition randomisation (issue #12): each acts, is recorded, is reproducible."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from covidxray.bundle import load_bundle
from covidxray.cli import main
from covidxray.training.adversary import SourceAdversary, dann_lambda, grad_reverse, source_table
from covidxray.training.augment import Augment, batch_generator, jpeg_roundtrip
from covidxray.training.config import ConfigError, TrainConfig
from covidxray.training.trainer import train
from test_training_data import make_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("tiny"))


def _cfg(manifest: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        manifest=str(manifest), model="seed_cnn6", out=str(out), epochs=1, image_size=32, batch_size=8,
        cache_dir=str(manifest.parent / "cache"), threads=1, progress=False, checkpoint_every=0, init="glorot",
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def plain(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run without the techniques, to compare with."""
    return train(_cfg(manifest, tmp_path_factory.mktemp("plain")))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


# -- gradient reversal and the adversary -------------------------------------------------------------------------
def test_gradient_reversal_flips_and_scales_the_gradient_only() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.25))
    assert dann_lambda(0.3, 0.0) == 0.0 and dann_lambda(0.3, 1.0) == pytest.approx(0.3, abs=1e-4)
    assert 0 < dann_lambda(0.3, 0.1) < dann_lambda(0.3, 0.5) < 0.3


def test_conditional_adversary_only_asks_within_classes_that_have_two_sources() -> None:
    # class 0 (covid) only in source "r"; classes 1 and 2 in "k" and "r"
    targets = np.array([0, 0, 1, 1, 2, 2])
    names, present = source_table(targets, np.array(["r", "r", "k", "r", "k", "r"]), 3)
    assert names == ["k", "r"] and present.tolist() == [[False, True], [True, True], [True, True]]
    torch.manual_seed(0)
    cond = SourceAdversary(8, present, "conditional")
    feats, y, src = torch.randn(6, 8), torch.from_numpy(targets), torch.tensor([1, 1, 0, 1, 0, 1])
    _, _, n = cond.loss(feats, y, src, 1.0)
    assert n == 4  # the two covid images cannot tell anything about the source: left out
    assert torch.isinf(cond.logits(feats, y)[:2, 0]).all()  # and source "k" never competes for class 0
    marg = SourceAdversary(8, present, "marginal")
    assert marg.loss(feats, y, src, 1.0)[2] == 6


def test_adversary_changes_training_is_recorded_and_kept_out_of_the_bundle(
    manifest: Path, plain: Path, tmp_path: Path
) -> None:
    adv = train(_cfg(manifest, tmp_path / "adv", adversary="conditional", adversary_weight=1.0))
    w_plain, w_adv = _weights(plain), _weights(adv)
    assert w_plain.keys() == w_adv.keys()  # the bundle holds the classifier only
    assert not torch.equal(w_plain["net.conv.conv1.weight"], w_adv["net.conv.conv1.weight"])
    row = json.loads((adv / "history.jsonl").read_text().splitlines()[-1])
    assert "adv_source_acc" in (adv / "history.csv").read_text().splitlines()[0]
    assert 0 <= row["adv_source_acc"] <= 1 and row["adv_loss"] > 0 and 0 < row["adv_lambda"] <= 1.0
    assert load_bundle(adv / "model").config.training["adversary"] == "conditional"
    info = json.loads((adv / "run.json").read_text())
    assert info["config"]["adversary"] == "conditional" and info["config"]["adversary_weight"] == 1.0
    # weight 0: the reversal passes no gradient to the features (the adversary still trains itself)
    zero = train(_cfg(manifest, tmp_path / "zero", adversary="marginal", adversary_weight=0.0))
    assert torch.equal(_weights(zero)["net.conv.conv1.weight"], w_plain["net.conv.conv1.weight"])


def test_bad_generalization_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="adversary must be one of"):
        TrainConfig(adversary="always")
    with pytest.raises(ConfigError, match="acquisition is a probability"):
        TrainConfig(acquisition=1.5)
    with pytest.raises(ConfigError, match="adversary_weight must not be negative"):
        TrainConfig(adversary_weight=-1)


# -- acquisition randomisation -----------------------------------------------------------------------------------
def test_acquisition_randomisation_is_seeded_bounded_and_acts() -> None:
    x = torch.rand(16, 1, 32, 32)
    acq = Augment("none", 32, acquisition=1.0)
    a, b = acq(x, batch_generator(1, 0, 0)), acq(x, batch_generator(1, 0, 0))
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    assert (a - x).abs().mean(dim=(1, 2, 3)).min() > 0.01  # every image changed
    assert torch.equal(Augment("none", 32, acquisition=0.0)(x, batch_generator(1, 0, 0)), x)
    # p = 1: every corner box is drawn with probability 1/2, in one grey -> some corner pixel rows are flat
    flat = [(a[i, 0, 0, :3] == a[i, 0, 0, 0]).all() for i in range(16)]
    assert sum(bool(f) for f in flat) >= 4


def test_jpeg_roundtrip_is_a_real_lossy_codec() -> None:
    img = torch.rand(1, 32, 32)
    low, high = jpeg_roundtrip(img, 15), jpeg_roundtrip(img, 90)
    err_low, err_high = (low - img).abs().mean(), (high - img).abs().mean()
    assert 0 < err_high < err_low  # lower quality, bigger error


def test_cli_flags_reach_the_run_and_weights_do_not_depend_on_workers(
    manifest: Path, plain: Path, tmp_path: Path
) -> None:
    argv = ["train", "--manifest", str(manifest), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress", "--init", "glorot",
            "--adversary", "conditional", "--adversary-weight", "0.5", "--acquisition", "0.5"]  # fmt: skip
    for workers in (0, 2):  # its own cache each: the workers decode the images
        out = tmp_path / f"w{workers}"
        assert (
            main([*argv, "--out", str(out), "--workers", str(workers), "--cache-dir", str(out / "cache")])
            == 0
        )
    cfg = json.loads((tmp_path / "w2" / "run.json").read_text())["config"]
    assert (cfg["adversary"], cfg["adversary_weight"], cfg["acquisition"]) == ("conditional", 0.5, 0.5)
    w0, w2 = _weights(tmp_path / "w0"), _weights(tmp_path / "w2")
    assert all(torch.equal(w0[k], w2[k]) for k in w0)
    assert not torch.equal(_weights(plain)["net.conv.conv1.weight"], w0["net.conv.conv1.weight"])  # they act


# -- model selection out of source (item 6) ---------------------------------------------------------------------
def test_holdout_source_is_scored_every_epoch_without_changing_training(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = train(_cfg(manifest, tmp_path / "h", holdout_source="a", epochs=2, patience=0))
    # no copies of a's images elsewhere in this manifest: recorded as none left out
    assert json.loads((run / "run.json").read_text())["holdout_copies_excluded"] == {"train": 0, "val": 0}
    assert load_bundle(run / "model").config.data["holdout_copies_excluded"] == {"train": 0, "val": 0}
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "holdout_auc_covid" in (run / "history.csv").read_text().splitlines()[0]
    for r in rows:
        assert 0 <= r["holdout_auc_covid"] <= 1 and 0 <= r["holdout_auc_macro"] <= 1
    # the same run without the held-out scoring trains exactly the same weights: it is only recorded
    import covidxray.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "holdout_rows", lambda df, cfg: None)
    blind = train(_cfg(manifest, tmp_path / "blind", holdout_source="a", epochs=2, patience=0))
    assert "holdout_auc_covid" not in (blind / "history.csv").read_text()
    w, wb = _weights(run), _weights(blind)
    assert all(torch.equal(w[k], wb[k]) for k in w)


def test_holdout_final_only_scores_the_held_out_source_once_and_trains_the_same_weights(
    manifest: Path, tmp_path: Path
) -> None:
    """--holdout-final-only (for models slow at inference): no per-epoch holdout columns, the held-out source
    scored once on the final (averaged) weights, and the same weights as the run that scores every epoch."""
    every = train(
        _cfg(manifest, tmp_path / "every", holdout_source="a", epochs=2, patience=0, average_from=1)
    )
    out = tmp_path / "final"
    argv = ["train", "--manifest", str(manifest), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "2",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress", "--init", "glorot",
            "--patience", "0", "--average-from", "1", "--holdout-source", "a", "--holdout-final-only",
            "--out", str(out), "--cache-dir", str(manifest.parent / "cache")]  # fmt: skip
    assert main(argv) == 0
    info, info_every = (json.loads((r / "run.json").read_text()) for r in (out, every))
    assert (
        info["config"]["holdout_final_only"] is True and info_every["config"]["holdout_final_only"] is False
    )
    assert "holdout_auc_covid" in (every / "history.csv").read_text().splitlines()[0]
    assert "holdout_auc_covid" not in (out / "history.csv").read_text()
    assert info["averaged_holdout"] == info_every["averaged_holdout"]
    assert 0 <= info["averaged_holdout"]["holdout_auc_covid"] <= 1
    w, we = _weights(out), _weights(every)
    assert all(torch.equal(w[k], we[k]) for k in w)
    # without weight averaging the model kept in model/ is scored once, recorded as final_holdout
    kept = train(_cfg(manifest, tmp_path / "kept", holdout_source="a", epochs=2, holdout_final_only=True))
    info = json.loads((kept / "run.json").read_text())
    assert "holdout_auc_covid" not in (kept / "history.csv").read_text()
    assert set(info["final_holdout"]) == {"holdout_auc_covid", "holdout_auc_macro"}
    assert load_bundle(kept / "model").config.training["final_holdout"] == info["final_holdout"]
    with pytest.raises(ConfigError, match="no holdout_source is set"):
        TrainConfig(holdout_final_only=True)


def test_epoch_weights_reselect_and_select_epoch_keep_the_chosen_epoch(
    manifest: Path, tmp_path: Path
) -> None:
    from covidxray.training.trainer import ResumeError, epoch_weights_path, reselect_epoch

    full = train(_cfg(manifest, tmp_path / "full", epochs=3, patience=0, epoch_weights=True))
    kept = [epoch_weights_path(full, e) for e in (1, 2, 3)]
    assert all(p.is_file() for p in kept)
    e1, e2 = load_file(str(kept[0])), load_file(str(kept[1]))
    assert not torch.equal(e1["net.conv.conv1.weight"], e2["net.conv.conv1.weight"])
    # rebuild model/ at epoch 2 afterwards: its weights, and the record of why
    reselect_epoch(full, 2, "best mean held-out COVID AUC")
    b = load_bundle(full / "model")
    assert b.config.training["best_epoch"] == 2
    assert b.config.training["selected_by"] == "best mean held-out COVID AUC"
    assert all(torch.equal(_weights(full)[k], e2[k]) for k in e2)
    with pytest.raises(ResumeError, match="no weights for epoch 7"):
        reselect_epoch(full, 7, "x")
    # select_epoch=2 beforehand: the same weights, and the run ends after epoch 2 (patience does not matter)
    sel = train(_cfg(manifest, tmp_path / "sel", epochs=3, patience=1, select_epoch=2))
    info = json.loads((sel / "run.json").read_text())
    assert (info["status"], info["epochs_run"], info["best_epoch"]) == ("completed", 2, 2)
    assert info["selected_by"] == "select_epoch 2" and info["config"]["select_epoch"] == 2
    assert all(torch.equal(_weights(sel)[k], e2[k]) for k in e2)
    with pytest.raises(ConfigError, match="select_epoch 4 is after the last epoch"):
        TrainConfig(epochs=3, select_epoch=4)


def test_average_from_keeps_the_mean_of_the_last_epochs_weights(manifest: Path, tmp_path: Path) -> None:
    """--average-from 2 of 3 epochs: model/ is the mean of epochs 2 and 3 (not any one epoch), patience does
    not stop the run, the record says so; the flag reaches the run; batch-norm models recompute statistics."""
    from covidxray.training.trainer import average_epoch_weights, epoch_weights_path

    out = tmp_path / "swa"
    argv = ["train", "--manifest", str(manifest), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "3",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress", "--init", "glorot",
            "--patience", "1", "--average-from", "2", "--holdout-source", "a", "--out", str(out),
            "--cache-dir", str(manifest.parent / "cache")]  # fmt: skip
    assert main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    assert (info["status"], info["epochs_run"], info["best_epoch"]) == ("completed", 3, 3)
    assert info["averaged_epochs"] == [2, 3] and info["config"]["average_from"] == 2
    assert info["selected_by"] == "average of epochs 2-3 (average_from 2)"
    assert set(info["averaged_holdout"]) == {"holdout_auc_covid", "holdout_auc_macro"}
    e2, e3 = (load_file(str(epoch_weights_path(out, e))) for e in (2, 3))
    avg = _weights(out)
    for k in avg:
        assert torch.allclose(avg[k], (e2[k] + e3[k]) / 2, atol=1e-6), k
    assert not torch.equal(avg["net.conv.conv1.weight"], e3["net.conv.conv1.weight"])
    b = load_bundle(out / "model")
    assert b.config.training["averaged_epochs"] == [2, 3]
    assert b.config.metrics["val"]["val_auc_macro"] is not None  # measured on the averaged weights
    # the averaged model's validation figures are its own, not epoch 3's
    last = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert b.config.metrics["val"]["val_loss"] != pytest.approx(last["val_loss"], abs=1e-9)
    assert b.config.training["selected_by"] == info["selected_by"]
    with pytest.raises(ConfigError, match="average_from 4 is after the last epoch"):
        TrainConfig(epochs=3, average_from=4)
    with pytest.raises(ConfigError, match="average_from must not be negative"):
        TrainConfig(average_from=-1)
    # batch norm: the running statistics are recomputed for the averaged weights, and without batches refused
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    run = tmp_path / "bn"
    (run / "epochs").mkdir(parents=True)
    from safetensors.torch import save_file

    for e, scale in ((1, 1.0), (2, 3.0)):
        sd = {k: v.clone() for k, v in net.state_dict().items()}
        sd["0.weight"] = torch.full_like(sd["0.weight"], scale)
        save_file(sd, str(epoch_weights_path(run, e)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="batch norm"):
        average_epoch_weights(net, run, 1, 2)
    batches = [torch.ones(4, 1, 5, 5)]
    avg_net = average_epoch_weights(net, run, 1, 2, batches)
    assert torch.allclose(avg_net[0].weight, torch.full_like(avg_net[0].weight, 2.0))
    mean = avg_net[0](batches[0]).mean(dim=(0, 2, 3))
    assert torch.allclose(avg_net[1].running_mean, mean, atol=1e-5)  # statistics of the averaged conv
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the model itself untouched


def test_average_from_ignores_patience_and_records_a_skip(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation that only gets worse: patience 1 stops a plain run after epoch 2, not an averaging one; a run
    stopped before average_from keeps its best epoch and says why; reselecting an epoch drops the average's
    record."""
    from covidxray.training import trainer as trainer_mod
    from covidxray.training.trainer import reselect_epoch

    real, calls = trainer_mod.val_metrics, []

    def worse_each_call(logits, targets, classes):
        m = real(logits, targets, classes)
        calls.append(1)
        return {**m, "val_auc_macro": 0.9 - 0.1 * len(calls)}

    monkeypatch.setattr(trainer_mod, "val_metrics", worse_each_call)
    plain = json.loads((train(_cfg(manifest, tmp_path / "p", epochs=3, patience=1)) / "run.json").read_text())
    assert (plain["status"], plain["epochs_run"]) == ("early_stopped", 2)
    avg_run = train(_cfg(manifest, tmp_path / "a", epochs=3, patience=1, average_from=2))
    info = json.loads((avg_run / "run.json").read_text())
    assert (info["status"], info["epochs_run"], info["averaged_epochs"]) == ("completed", 3, [2, 3])
    # a time budget that ends the run after epoch 1, before average_from 2: no average, and the reason
    short = json.loads(
        (
            train(_cfg(manifest, tmp_path / "s", epochs=3, average_from=2, max_minutes=1e-6)) / "run.json"
        ).read_text()
    )
    assert short["status"] == "time_budget" and short["averaged_epochs"] is None
    assert "before average_from 2" in short["averaging_skipped"]
    reselect_epoch(avg_run, 2, "chosen afterwards")
    training = load_bundle(avg_run / "model").config.training
    assert training["best_epoch"] == 2 and "averaged_epochs" not in training


def test_average_from_recomputes_batch_norm_statistics_in_a_real_run(manifest: Path, tmp_path: Path) -> None:
    """resnet18 (batch norm): the kept model holds the averaged weights and running statistics measured for
    them on the training images, not any epoch's."""
    from covidxray.training.trainer import epoch_weights_path

    run = train(_cfg(manifest, tmp_path / "bn", model="resnet18", init="default", epochs=2, average_from=1))
    info = json.loads((run / "run.json").read_text())
    assert info["averaged_epochs"] == [1, 2]
    avg = _weights(run)
    e1, e2 = (load_file(str(epoch_weights_path(run, e))) for e in (1, 2))
    conv = next(k for k in avg if k.endswith("conv1.weight"))
    assert torch.allclose(avg[conv], (e1[conv] + e2[conv]) / 2, atol=1e-6)
    stat = next(k for k in avg if k.endswith("running_mean"))
    assert not torch.allclose(avg[stat], e2[stat]) and not torch.allclose(
        avg[stat], (e1[stat] + e2[stat]) / 2
    )


def test_selection_flags_reach_the_run(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    argv = ["train", "--manifest", str(manifest), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "2",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress", "--init", "glorot",
            "--epoch-weights", "--select-epoch", "1", "--out", str(out), "--cache-dir", str(out / "cache")]  # fmt: skip
    assert main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["epoch_weights"] is True and info["epochs_run"] == 1
    assert (out / "epochs" / "epoch-001.safetensors").is_file()


def test_mixup_blends_pairs_acts_is_seeded_and_is_refused_with_an_adversary(
    manifest: Path, plain: Path, tmp_path: Path
) -> None:
    from covidxray.training.trainer import mixup_draw

    lam, perm = mixup_draw(0.4, 8, 0, 1, 2)
    lam2, perm2 = mixup_draw(0.4, 8, 0, 1, 2)
    assert (
        0 < lam < 1 and lam == lam2 and torch.equal(perm, perm2) and sorted(perm.tolist()) == list(range(8))
    )
    assert mixup_draw(0.4, 8, 0, 1, 3)[0] != lam  # another step, another draw
    a = train(_cfg(manifest, tmp_path / "a", mixup=0.4))
    b = train(_cfg(manifest, tmp_path / "b", mixup=0.4))
    wa, wb, wp = _weights(a), _weights(b), _weights(plain)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["net.conv.conv1.weight"], wp["net.conv.conv1.weight"])
    assert json.loads((a / "run.json").read_text())["config"]["mixup"] == 0.4
    with pytest.raises(ConfigError, match="mixup and a source adversary"):
        TrainConfig(mixup=0.2, adversary="marginal")
    with pytest.raises(ConfigError, match="mixup is a Beta"):
        TrainConfig(mixup=-1)


def test_compare_names_an_averaged_run_by_its_epochs() -> None:
    from covidxray.evaluation.compare import _kept

    assert _kept({"best_epoch": 7, "averaged_epochs": None}) == "7"
    assert _kept({"best_epoch": 20, "averaged_epochs": [11, 20]}) == "average 11-20"


def test_source_power_sets_each_sources_share_within_a_label_and_acts(manifest: Path, tmp_path: Path) -> None:
    from covidxray.training.sampler import balanced_weights

    labels = np.array([0] * 90 + [0] * 10 + [1] * 20)
    sources = np.array(["a"] * 90 + ["b"] * 10 + ["a"] * 20)
    equal, prop = balanced_weights(labels, sources, 0.0), balanced_weights(labels, sources, 1.0)
    assert equal[:90].sum() == pytest.approx(0.25) and equal[90:100].sum() == pytest.approx(0.25)
    assert prop[:90].sum() == pytest.approx(0.45) and prop[90:100].sum() == pytest.approx(0.05)
    # the default is the square-root rule every run before the option drew with, bit for bit
    old = np.zeros(len(labels))
    for lab, n_labels in ((0, 2), (1, 2)):
        srcs, counts = np.unique(sources[labels == lab], return_counts=True)
        shares = np.sqrt(counts) / np.sqrt(counts).sum()
        for src, share, count in zip(srcs, shares, counts, strict=True):
            old[(labels == lab) & (sources == src)] = share / (n_labels * count)
    assert np.array_equal(balanced_weights(labels, sources), old / old.sum())
    assert balanced_weights(labels, sources)[:90].sum() == pytest.approx(0.375)  # sqrt(90) : sqrt(10) = 3 : 1
    # a manifest whose sources differ in size within every label: the power changes the draws and the weights
    df = pd.read_csv(manifest)
    df = df[~((df.source == "b") & (df.split == "train") & (df.image_id.str[-1].astype(int) > 3))]
    uneven = manifest.parent / "uneven.csv"
    df.to_csv(uneven, index=False)
    a = tmp_path / "a"
    argv = ["train", "--manifest", str(uneven), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress", "--init", "glorot",
            "--source-power", "0", "--out", str(a), "--cache-dir", str(manifest.parent / "cache")]  # fmt: skip
    assert main(argv) == 0
    b = train(_cfg(uneven, tmp_path / "b"))
    wa, wb = _weights(a), _weights(b)
    assert not torch.equal(wa["net.conv.conv1.weight"], wb["net.conv.conv1.weight"])
    assert json.loads((a / "run.json").read_text())["config"]["source_power"] == 0.0
    assert load_bundle(a / "model").config.training["source_power"] == 0.0
    for bad in (1.5, "0.25", None, True):
        with pytest.raises(ConfigError, match="source_power must lie in"):
            TrainConfig(source_power=bad)
    with pytest.raises(ConfigError, match="sampler 'shuffle' draws no shares"):
        TrainConfig(source_power=0.0, sampler="shuffle")
    assert TrainConfig(source_power=1).source_power == 1.0 and isinstance(
        TrainConfig(source_power=1).source_power, float
    )


def test_label_smoothing_and_weight_decay_act_are_recorded_and_validated(
    manifest: Path, plain: Path, tmp_path: Path
) -> None:
    from covidxray.training.trainer import build_optimizer
    from covidxray.training.validation import task_loss

    logits, y = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), torch.tensor([0, 1])
    assert float(task_loss(logits, y, smoothing=0.2)) > float(task_loss(logits, y))
    # smoothed target of the right class: 1 - 0.2 + 0.2 / 3; by hand from the log-softmax
    logp = torch.log_softmax(logits, 1)
    target = torch.full((2, 3), 0.2 / 3) + torch.nn.functional.one_hot(y, 3) * 0.8
    assert float(task_loss(logits, y, smoothing=0.2)) == pytest.approx(float(-(target * logp).sum(1).mean()))
    one = torch.tensor([[2.0], [-1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(one[:, 0], torch.tensor([0.1, 0.9]))
    assert float(task_loss(one, y, smoothing=0.2)) == pytest.approx(float(bce))
    cfg = _cfg(manifest, tmp_path / "o", weight_decay=0.1)
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.1
    assert type(build_optimizer(_cfg(manifest, tmp_path / "p"), torch.nn.Linear(2, 2))) is torch.optim.Adam
    wp = _weights(plain)
    for kw in ({"label_smoothing": 0.1}, {"weight_decay": 0.1}):
        run = train(_cfg(manifest, tmp_path / next(iter(kw)), **kw))
        assert not torch.equal(_weights(run)["net.conv.conv1.weight"], wp["net.conv.conv1.weight"])
        assert json.loads((run / "run.json").read_text())["config"][next(iter(kw))] == 0.1
    for bad in ({"label_smoothing": 1.0}, {"weight_decay": -0.1}, {"label_smoothing": "0.1"}):
        with pytest.raises(ConfigError, match="must be a number in"):
            TrainConfig(**bad)


# -- GroupDRO ----------------------------------------------------------------------------------------------------
def test_group_dro_moves_weight_to_the_worst_group_and_minimises_the_weighted_loss() -> None:
    from covidxray.training.groupdro import GroupDRO

    dro = GroupDRO.for_split(
        np.array(["k", "r", "r", "k", "r"]), np.array([1, 0, 1, 1, 0]), ("covid", "normal"), 1.0
    )
    assert dro.names == ["k/normal", "r/covid", "r/normal"] and dro.groups.tolist() == [0, 1, 2, 0, 1]
    # a batch of rows 0, 1, 3 (groups k/normal twice, r/covid once; r/normal absent), losses 1, 3, 2
    rows = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    out = dro.loss(rows, np.array([0, 1, 3]))
    q = torch.tensor(
        [np.exp(1.5), np.exp(3.0), 1.0], dtype=torch.float64
    )  # exp(eta * group mean), absent: exp(0)
    q = q / q.sum()
    assert torch.allclose(dro.q, q)
    assert float(out.detach()) == pytest.approx(float(q[0] * 1.5 + q[1] * 3.0))
    out.backward()  # each row's gradient: its group's weight over the group's rows in the batch
    assert torch.allclose(rows.grad.double(), torch.stack([q[0] / 2, q[1], q[0] / 2]).double(), atol=1e-6)
    assert (
        dro.q[1] > dro.q[0] > dro.q[2]
    )  # the group with the highest loss gains, the absent one loses its share
    assert sum(dro.weights().values()) == pytest.approx(1.0)
    other = GroupDRO(dro.groups.numpy(), dro.names, 1.0)
    other.load_state_dict(dro.state_dict())
    assert torch.equal(other.q, dro.q)
    with pytest.raises(ValueError, match="differ from this run's"):
        GroupDRO(np.array([0]), ["x"], 1.0).load_state_dict(dro.state_dict())


def test_task_loss_rows_are_the_task_loss_row_by_row() -> None:
    from covidxray.training.validation import task_loss, task_loss_rows

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([2.0, 0.5, 1.0])
    for weight in (None, w):
        for smoothing in (0.0, 0.2):
            rows = task_loss_rows(logits, y, weight, smoothing)
            norm = len(y) if weight is None else float(weight[y].sum())
            assert rows.shape == (6,)
            assert float(rows.sum() / norm) == pytest.approx(
                float(task_loss(logits, y, weight, smoothing)), 1e-6
            )
    one, yb = torch.randn(6, 1, generator=g), torch.tensor([0, 1, 1, 0, 1, 0])
    for weight in (None, torch.tensor([1.0, 3.0])):
        rows = task_loss_rows(one, yb, weight, 0.1)
        norm = len(yb) if weight is None else float(weight[yb].sum())
        assert float(rows.sum() / norm) == pytest.approx(float(task_loss(one, yb, weight, 0.1)), 1e-6)


def test_group_dro_acts_is_recorded_checkpointed_and_validated(
    manifest: Path, plain: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dro"
    argv = ["train", "--manifest", str(manifest), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress", "--init", "glorot",
            "--group-dro", "0.5", "--out", str(out), "--cache-dir", str(manifest.parent / "cache")]  # fmt: skip
    assert main(argv) == 0
    assert not torch.equal(_weights(out)["net.conv.conv1.weight"], _weights(plain)["net.conv.conv1.weight"])
    same = train(
        _cfg(manifest, tmp_path / "same", group_dro=0.5)
    )  # the flag is the config field, nothing else
    assert torch.equal(_weights(out)["net.conv.conv1.weight"], _weights(same)["net.conv.conv1.weight"])
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["group_dro"] == 0.5
    weights = run["group_dro_weights"]
    df = pd.read_csv(manifest)
    train_rows = df[df.split == "train"]
    assert set(weights) == {f"{s}/{lab}" for s, lab in zip(train_rows.source, train_rows.label, strict=True)}
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(set(weights.values())) > 1  # the weights moved away from uniform
    assert load_bundle(out / "model").config.training["group_dro"] == 0.5
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["group_dro"]["names"] == sorted(weights)
    assert [round(float(w), 6) for w in state["group_dro"]["q"]] == [weights[n] for n in sorted(weights)]
    assert "group_dro_weights" not in json.loads((plain / "run.json").read_text())
    for bad in (-0.1, 11, "0.01", None, True):
        with pytest.raises(ConfigError, match="group_dro is GroupDRO's step size"):
            TrainConfig(group_dro=bad)
    with pytest.raises(ConfigError, match="group_dro and mixup"):
        TrainConfig(group_dro=0.01, mixup=0.2)


def test_group_dro_weights_survive_a_resume(manifest: Path, tmp_path: Path) -> None:
    from covidxray.training.trainer import resume

    first = train(_cfg(manifest, tmp_path / "resumed", group_dro=0.5))
    resume(first, epochs=2, progress=False)
    whole = train(_cfg(manifest, tmp_path / "whole", group_dro=0.5, epochs=2))
    a, b = (json.loads((r / "run.json").read_text()) for r in (first, whole))
    assert a["epochs_run"] == 2 and a["group_dro_weights"] == b["group_dro_weights"]
    assert torch.equal(_weights(first)["net.conv.conv1.weight"], _weights(whole)["net.conv.conv1.weight"])


# -- COVID-19 masked for sources without it ---------------------------------------------------------------------
def test_mask_covid_is_the_cross_entropy_over_the_other_classes_and_stops_its_gradient() -> None:
    from covidxray.training.trainer import mask_covid
    from covidxray.training.validation import task_loss

    logits = torch.tensor([[2.0, 0.5, -1.0], [3.0, 1.0, 0.0], [0.2, 0.1, 0.4]], requires_grad=True)
    y, rows = torch.tensor([0, 1, 2]), torch.tensor([False, True, True])
    loss = task_loss(mask_covid(logits, rows, 0), y)
    by_hand = (
        -torch.log_softmax(logits[0], 0)[0]
        - torch.log_softmax(logits[1, 1:], 0)[0]
        - torch.log_softmax(logits[2, 1:], 0)[1]
    ) / 3
    assert float(loss.detach()) == pytest.approx(float(by_hand.detach()))
    loss.backward()
    assert logits.grad[1:, 0].eq(0).all() and logits.grad[0, 0] != 0  # masked rows never move p(covid)
    assert logits.grad[1:, 1:].ne(0).all()  # but still teach normal against pneumonia


def test_covid_masked_sources_act_are_recorded_and_validated(manifest: Path, tmp_path: Path) -> None:
    df = pd.read_csv(manifest)
    df = df[~((df.source == "b") & (df.label == "covid"))]  # "b" holds no COVID-19, like Kermany
    no_covid_b = manifest.parent / "no_covid_b.csv"  # beside the images its paths are relative to
    df.to_csv(no_covid_b, index=False)
    plain = train(_cfg(no_covid_b, tmp_path / "plain"))
    argv = ["train", "--manifest", str(no_covid_b), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress", "--init", "glorot",
            "--covid-masked-sources", "b", "--out", str(tmp_path / "masked"),
            "--cache-dir", str(manifest.parent / "cache")]  # fmt: skip
    assert main(argv) == 0
    masked = tmp_path / "masked"
    assert not torch.equal(
        _weights(masked)["net.conv.conv1.weight"], _weights(plain)["net.conv.conv1.weight"]
    )
    assert json.loads((masked / "run.json").read_text())["config"]["covid_masked_sources"] == "b"
    assert load_bundle(masked / "model").config.training["covid_masked_sources"] == "b"
    assert TrainConfig(covid_masked_sources=" b, b ,c").covid_masked_sources == "b,c"
    with pytest.raises(
        ConfigError, match=r"no training row comes from \(training sources: \['a', 'b'\]\): check the name"
    ):
        train(_cfg(no_covid_b, tmp_path / "x", covid_masked_sources="kermany"))
    with pytest.raises(ConfigError, match=r"source\(s\) \['a'\] hold COVID-19 rows in train"):
        train(_cfg(no_covid_b, tmp_path / "y", covid_masked_sources="a"))
    for kw, why in (
        ({"classes": "covid,rest"}, r"among at least three classes, got classes \['covid', 'rest'\]"),
        ({"classes": "normal,pneumonia"}, "use --classes covid,normal,pneumonia"),
        ({"loss": "bce", "classes": "covid,normal,pneumonia"}, "needs exactly two classes"),
        ({"label_smoothing": 0.1}, "label_smoothing .*drop one of them"),
        ({"mixup": 0.2}, "mixup .*drop one of them"),
    ):
        with pytest.raises(ConfigError, match=why):
            TrainConfig(covid_masked_sources=" b, b", **kw)
    # the adversary's and GroupDRO's losses see the mask too: each run differs from the same run without it
    for kw in ({"adversary": "marginal"}, {"group_dro": 0.01}):
        with_mask = train(
            _cfg(no_covid_b, tmp_path / f"m{len(kw)}{next(iter(kw))}", covid_masked_sources="b", **kw)
        )
        without = train(_cfg(no_covid_b, tmp_path / f"u{next(iter(kw))}", **kw))
        assert not torch.equal(
            _weights(with_mask)["net.conv.conv1.weight"], _weights(without)["net.conv.conv1.weight"]
        )
        assert np.isfinite(pd.read_csv(with_mask / "history.csv")["train_loss"]).all()
    # a fold that holds the masked source out has nothing to mask (crossval --all runs one): it trains as without
    held = train(_cfg(no_covid_b, tmp_path / "held", covid_masked_sources="b", holdout_source="b"))
    plain_held = train(_cfg(no_covid_b, tmp_path / "plain_held", holdout_source="b"))
    assert torch.equal(_weights(held)["net.conv.conv1.weight"], _weights(plain_held)["net.conv.conv1.weight"])


def test_validation_scores_masked_sources_as_they_are_trained(manifest: Path, tmp_path: Path) -> None:
    from covidxray.training.distributed import Dist
    from covidxray.training.trainer import _Run, read_training_manifest
    from covidxray.training.validation import predict_logits, val_metrics

    df = pd.read_csv(manifest)
    df = df[~((df.source == "b") & (df.label == "covid"))]
    path = manifest.parent / "no_covid_b_val.csv"
    df.to_csv(path, index=False)
    cfg = _cfg(path, tmp_path / "r", covid_masked_sources="b")
    run = _Run(cfg, read_training_manifest(str(path)), Dist(), resume=False)
    last = [m for m in run.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias[cfg.classes.index("covid")] += 50.0  # a model that calls every image COVID-19
    masked = run.val_figures(run.model)
    # training masks exactly the COVID-19 column of exactly source b's rows
    idx = np.arange(len(run.train_split))
    seen = run._masked(torch.zeros(len(idx), 3), idx)
    expect = np.zeros((len(idx), 3), bool)
    expect[run.train_split.sources == "b", cfg.classes.index("covid")] = True
    assert np.array_equal(torch.isinf(seen).numpy(), expect) and expect.any()
    logits, targets = predict_logits(run.model, run.images, run.val_split, run.pre, Dist(), 16)
    plain = val_metrics(logits, targets, cfg.classes)
    b_val = int((run.val_split.sources == "b").sum())
    # 8 of the 10 val rows are not COVID-19 and pay ~50 each for the call; masked, only source a's 4 still do
    assert b_val and masked["val_loss"] < 0.6 * plain["val_loss"]
    covid_val = int((run.val_split.targets == cfg.classes.index("covid")).sum())
    assert plain["val_acc"] == pytest.approx(covid_val / len(targets))
    assert masked["val_acc"] > plain["val_acc"]
    assert (
        masked["val_auc_covid_unmasked"] == plain["val_auc_covid"]
    )  # what the bundle predicts, recorded beside


def test_covid_mask_weight_blends_the_masked_and_the_plain_loss(manifest: Path, tmp_path: Path) -> None:
    from covidxray.training.distributed import Dist
    from covidxray.training.trainer import _Run, read_training_manifest

    df = pd.read_csv(manifest)
    df = df[~((df.source == "b") & (df.label == "covid"))]
    path = manifest.parent / "no_covid_b_weight.csv"
    df.to_csv(path, index=False)
    runs = {}
    for w in (1.0, 0.25):
        cfg = _cfg(path, tmp_path / f"r{w}", covid_masked_sources="b", covid_mask_weight=w)
        runs[w] = _Run(cfg, read_training_manifest(str(path)), Dist(), resume=False)
    idx = np.arange(len(runs[1.0].train_split))
    y = torch.from_numpy(runs[1.0].train_split.targets[idx])
    raw = torch.randn(len(idx), 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    _, masked, _ = runs[1.0]._class_loss(raw, y, None, idx)
    logits, recorded, minimised = runs[0.25]._class_loss(raw, y, None, idx)
    plain = torch.nn.functional.cross_entropy(raw, y)
    assert torch.isinf(logits).any()  # the logits as the loss sees them stay masked
    assert recorded.item() == pytest.approx(0.25 * masked.item() + 0.75 * plain.item())
    assert minimised.item() == pytest.approx(recorded.item())
    minimised.backward()
    b = torch.from_numpy(runs[1.0].train_split.sources[idx] == "b")
    assert raw.grad[b, 0].ne(0).all()  # a weight below 1 lets source b lower p(covid) again, a little
    # it acts in training and is recorded; 1 (the default) is the wholly masked loss
    trained = {
        w: train(_cfg(path, tmp_path / f"t{w}", covid_masked_sources="b", covid_mask_weight=w))
        for w in (1.0, 0.5)
    }
    assert not torch.equal(
        _weights(trained[0.5])["net.conv.conv1.weight"], _weights(trained[1.0])["net.conv.conv1.weight"]
    )
    assert json.loads((trained[0.5] / "run.json").read_text())["config"]["covid_mask_weight"] == 0.5
    assert load_bundle(trained[0.5] / "model").config.training["covid_mask_weight"] == 0.5
    for kw, why in (
        ({"covid_mask_weight": 0.5}, "none is given: add --covid-masked-sources"),
        ({"covid_mask_weight": 0, "covid_masked_sources": "b"}, r"in \(0, 1\]"),
        ({"covid_mask_weight": 1.5, "covid_masked_sources": "b"}, r"in \(0, 1\]"),
        ({"covid_mask_weight": True, "covid_masked_sources": "b"}, "got True"),
        ({"covid_mask_weight": "0.5", "covid_masked_sources": "b"}, "got '0.5'"),  # checked before compared
        ({"covid_mask_weight": 0.5, "covid_masked_sources": "b", "group_dro": 0.01}, "drop group_dro"),
    ):
        with pytest.raises(ConfigError, match=why):
            TrainConfig(**kw)


# -- sharpness-aware minimisation --------------------------------------------------------------------------------
def test_sam_gradient_is_the_gradient_at_the_perturbed_weights_and_restores_them() -> None:
    from covidxray.training.trainer import sam_gradient

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    x = torch.randn(16, 3)

    def loss() -> torch.Tensor:
        return (net(x) ** 2).mean() + sum((p**2).sum() for p in net.parameters())

    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss().backward()
    g = [p.grad.clone() for p in net.parameters()]
    norm = torch.sqrt(sum((t**2).sum() for t in g))
    after_first = {k: v.clone() for k, v in net.state_dict().items()}  # BN stats moved by the first pass
    assert not torch.equal(after_first["1.running_mean"], before["1.running_mean"])
    sam_gradient(net, 0.05, loss)
    # the weights are back, bit for bit; the second pass left the BN statistics as the first pass set them
    for k, v in net.state_dict().items():
        assert k.endswith("num_batches_tracked") or torch.equal(v, after_first[k]), k
    assert net[1].momentum == 0.1
    # the gradient now is the plain gradient at w + 0.05 g / |g|, computed by hand
    ref = copy.deepcopy(net)
    ref[1].momentum = 0.0
    with torch.no_grad():
        for p, gp in zip(ref.parameters(), g, strict=True):
            p.add_(gp * (0.05 / norm))
    ref.zero_grad()
    ((ref(x) ** 2).mean() + sum((p**2).sum() for p in ref.parameters())).backward()
    for p, r, gp in zip(net.parameters(), ref.parameters(), g, strict=True):
        assert torch.allclose(p.grad, r.grad, atol=1e-6)
        assert not torch.allclose(p.grad, gp)  # not the plain gradient


def test_sam_acts_is_seeded_recorded_and_validated(manifest: Path, plain: Path, tmp_path: Path) -> None:
    argv = ["train", "--manifest", str(manifest), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress", "--init", "glorot",
            "--sam", "0.05", "--out", str(tmp_path / "a"), "--cache-dir", str(manifest.parent / "cache")]  # fmt: skip
    assert main(argv) == 0
    a, b = tmp_path / "a", train(_cfg(manifest, tmp_path / "b", sam=0.05))
    wa, wb, wp = _weights(a), _weights(b), _weights(plain)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the flag and the field: the same seeded run
    assert not torch.equal(wa["net.conv.conv1.weight"], wp["net.conv.conv1.weight"])
    assert json.loads((a / "run.json").read_text())["config"]["sam"] == 0.05
    assert load_bundle(a / "model").config.training["sam"] == 0.05
    mixed = train(_cfg(manifest, tmp_path / "m", sam=0.05, mixup=0.4))  # with mixup: the blend is kept
    assert np.isfinite(pd.read_csv(mixed / "history.csv")["train_loss"]).all()
    for kw, why in (
        ({"sam": -0.1}, "a number in"),
        ({"sam": "0.05"}, "a number in"),
        ({"sam": 0.05, "adversary": "conditional"}, "source adversary or group_dro"),
        ({"sam": 0.05, "group_dro": 0.01}, "source adversary or group_dro"),
    ):
        with pytest.raises(ConfigError, match=why):
            TrainConfig(**kw)


def test_average_every_averages_the_weights_of_each_step_and_survives_a_resume(
    manifest: Path, tmp_path: Path
) -> None:
    """--average-every K: the snapshots every K steps of the averaged epochs. With K = the steps of an epoch the
    snapshots are the epoch ends, so the model is the epoch-end average bit for bit; K = 1 (SWAD's dense form)
    is another model; a run resumed between epochs gives the same one as a run made at once."""
    from covidxray.training.trainer import resume

    kw = dict(epochs=2, average_from=1, epoch_samples=32, batch_size=8)  # 4 steps an epoch
    sparse = train(_cfg(manifest, tmp_path / "sparse", **kw))
    at_ends = train(_cfg(manifest, tmp_path / "ends", average_every=4, **kw))
    ws, we = _weights(sparse), _weights(at_ends)
    assert all(torch.equal(ws[k], we[k]) for k in ws)
    info = json.loads((at_ends / "run.json").read_text())
    assert info["averaged_steps"] == 2 and info["config"]["average_every"] == 4
    assert info["selected_by"] == "average of epochs 1-2 (average_from 1, every 4 steps)"
    assert "averaged_steps" not in json.loads((sparse / "run.json").read_text())
    argv = ["train", "--manifest", str(manifest), "--model", "seed_cnn6", "--image-size", "32", "--epochs", "2",
            "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress", "--init", "glorot",
            "--epoch-samples", "32", "--average-from", "1", "--average-every", "1", "--out", str(tmp_path / "dense"),
            "--cache-dir", str(manifest.parent / "cache")]  # fmt: skip
    assert main(argv) == 0
    dense = tmp_path / "dense"
    wd = _weights(dense)
    assert not torch.equal(wd["net.conv.conv1.weight"], ws["net.conv.conv1.weight"])
    assert load_bundle(dense / "model").config.training["averaged_steps"] == 8
    first = train(_cfg(manifest, tmp_path / "resumed", average_every=1, **{**kw, "epochs": 1}))
    resume(first, epochs=2, progress=False)
    wr = _weights(first)
    assert all(torch.equal(wr[k], wd[k]) for k in wd)
    assert json.loads((first / "run.json").read_text())["averaged_steps"] == 8
    for bad in (-1, 2.5, True, "2"):
        with pytest.raises(ConfigError, match="average_every is a whole number of optimizer steps"):
            TrainConfig(average_every=bad, average_from=1)
    with pytest.raises(ConfigError, match="give --average-from N too"):
        TrainConfig(average_every=1)


def test_random_erasing_puts_one_noise_box_per_picked_image_is_seeded_and_acts(
    manifest: Path, plain: Path, tmp_path: Path
) -> None:
    x = torch.full((16, 1, 32, 32), 0.5)
    out = Augment("none", 32, erasing=1.0)(x, batch_generator(0, 0, 0))
    again = Augment("none", 32, erasing=1.0)(x, batch_generator(0, 0, 0))
    assert torch.equal(out, again) and torch.equal(x, torch.full_like(x, 0.5))  # seeded; the input untouched
    for img in out[:, 0]:
        changed = torch.nonzero(img != 0.5)
        (r0, c0), (r1, c1) = changed.min(0).values.tolist(), changed.max(0).values.tolist()
        box = (r1 - r0 + 1) * (c1 - c0 + 1)
        assert 0.02 * 1024 - 8 <= box <= 1024 / 3 + 40  # one box of 2-33 % of the area (rounded sides)
        assert len(changed) >= 0.95 * box  # noise fills the box (a noise value may equal 0.5 by chance)
    assert torch.equal(Augment("none", 32, erasing=0.0)(x, batch_generator(0, 0, 0)), x)
    some = Augment("none", 32, erasing=0.5)(x, batch_generator(0, 0, 1))
    n_erased = int(((some != 0.5).flatten(1).any(1)).sum())
    assert 2 <= n_erased <= 14
    run = train(_cfg(manifest, tmp_path / "erase", erasing=0.5))
    assert not torch.equal(_weights(run)["net.conv.conv1.weight"], _weights(plain)["net.conv.conv1.weight"])
    assert json.loads((run / "run.json").read_text())["config"]["erasing"] == 0.5
    for bad in (1.5, -0.1, "0.5"):
        with pytest.raises(ConfigError, match="erasing is a probability"):
            TrainConfig(erasing=bad)


def test_average_every_counts_steps_over_the_run_resumes_mid_epoch_and_says_when_it_took_nothing(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covidxray.training import trainer
    from covidxray.training.trainer import reselect_epoch, resume

    kw = dict(epochs=2, average_from=1, epoch_samples=32, batch_size=8)  # 4 steps an epoch, 8 in all
    six = train(_cfg(manifest, tmp_path / "six", average_every=6, **kw))  # K need not divide an epoch
    assert json.loads((six / "run.json").read_text())["averaged_steps"] == 1  # the run's 6th step only
    # more than the window's steps: nothing taken, said so, and the epoch-end average kept
    many = train(_cfg(manifest, tmp_path / "many", average_every=100, **kw))
    sparse = train(_cfg(manifest, tmp_path / "sparse", **kw))
    info = json.loads((many / "run.json").read_text())
    assert "averaged_steps" not in info and "no snapshot was taken" in info["averaging_note"]
    wm, ws = _weights(many), _weights(sparse)
    assert all(torch.equal(wm[k], ws[k]) for k in ws)
    # a run stopped mid-epoch (after the checkpoint of step 2 of epoch 2) and resumed gives the same model
    whole = train(_cfg(manifest, tmp_path / "whole", average_every=1, checkpoint_every=2, **kw))
    calls, real = [], trainer._Run.checkpoint

    def stop_after_three(self) -> None:
        real(self)
        calls.append((self.epoch, self.step))
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer._Run, "checkpoint", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(manifest, tmp_path / "cut", average_every=1, checkpoint_every=2, **kw))
    monkeypatch.setattr(trainer._Run, "checkpoint", real)
    assert calls[-1] == (1, 2)  # mid-epoch: epoch 2 (0-based 1), after its second step
    resume(tmp_path / "cut", progress=False)
    ww, wc = _weights(whole), _weights(tmp_path / "cut")
    assert all(torch.equal(ww[k], wc[k]) for k in ww)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["averaged_steps"] == 8
    # one epoch re-selected from a dense run: the bundle no longer claims an average
    reselect_epoch(whole, 2, "select_epoch 2")
    training = load_bundle(whole / "model").config.training
    assert "averaged_steps" not in training and training["selected_by"] == "select_epoch 2"
    reselect_epoch(many, 2, "select_epoch 2")  # nor the note of an average that took no snapshot
    assert "averaging_note" not in load_bundle(many / "model").config.training
