"""Training building blocks: config rules, samplers, class weights, augmentation policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidxray.training.augment import Augment, affine_warp, batch_generator
from covidxray.training.config import ConfigError, TrainConfig, parse_classes
from covidxray.training.sampler import balanced_weights, epoch_order, expected_label_frequency, shard


def test_config_round_trips_and_names_bad_values() -> None:
    cfg = TrainConfig(manifest="m.csv", classes="covid,rest", loss="bce", optimizer="rmsprop")
    assert cfg.classes == ("covid", "rest") and cfg.num_outputs == 1
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown class name\(s\) \['covid19'\]"):
        parse_classes("covid19,normal")
    with pytest.raises(ConfigError, match="needs exactly two classes"):
        TrainConfig(loss="bce")
    with pytest.raises(ConfigError, match="'rest' would be empty"):
        parse_classes("covid,normal,pneumonia,rest")
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainConfig(optimizer="adamw")
    with pytest.raises(ConfigError, match="init must be one of"):
        TrainConfig(init="lecun")
    with pytest.raises(ConfigError, match=r"unknown training option\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})


def test_config_file_yaml(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model: seed_cnn2\nclasses: [covid, normal]\nepochs: 4\n")
    cfg = TrainConfig.from_file(path)
    assert (cfg.model, cfg.classes, cfg.epochs) == ("seed_cnn2", ("covid", "normal"), 4)


def test_balanced_sampler_equalises_labels_and_sqrt_weights_sources_within_a_label() -> None:
    labels = np.array([0] * 90 + [0] * 10 + [1] * 20)
    sources = np.array(["a"] * 90 + ["b"] * 10 + ["a"] * 20)
    p = balanced_weights(labels, sources)
    # sqrt(90) : sqrt(10) = 3 : 1 of label 0's half
    assert p[:90].sum() == pytest.approx(0.375) and p[90:100].sum() == pytest.approx(0.125)
    assert p[100:].sum() == pytest.approx(0.5)
    assert expected_label_frequency(labels, 2, p) == pytest.approx([0.5, 0.5])
    order = epoch_order(len(labels), seed=1, epoch=0, weights=p)
    assert len(order) == 120 and np.array_equal(order, epoch_order(120, seed=1, epoch=0, weights=p))
    assert not np.array_equal(order, epoch_order(120, seed=1, epoch=1, weights=p))


def test_epoch_samples_sets_the_epoch_length() -> None:
    assert len(epoch_order(50, seed=0, epoch=0, size=20)) == 20
    longer = epoch_order(10, seed=0, epoch=0, size=25)  # without weights: whole permutations, then a part
    assert len(longer) == 25 and set(longer[:10]) == set(range(10))
    p = np.full(10, 0.1)
    assert len(epoch_order(10, seed=0, epoch=0, weights=p, size=7)) == 7


def test_shards_cover_the_epoch_with_equal_counts() -> None:
    order = epoch_order(11, seed=0, epoch=0)
    parts = [shard(order, r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [6, 6]
    assert set(np.concatenate(parts)) == set(range(11))


def test_identity_warp_and_flip_are_exact_enough() -> None:
    x = torch.rand(3, 1, 16, 16)
    same = affine_warp(x, torch.zeros(3), torch.ones(3, 2))
    flipped = affine_warp(x, torch.zeros(3), torch.ones(3, 2), flip=torch.ones(3, dtype=torch.bool))
    assert torch.allclose(same, x, atol=1e-5) and torch.allclose(flipped, x.flip(-1), atol=1e-5)


@pytest.mark.parametrize("policy", ["seed002", "light"])
def test_augmentation_is_seeded_bounded_and_changes_images(policy: str) -> None:
    x = torch.rand(4, 1, 32, 32)
    aug = Augment(policy, 32)
    a, b = aug(x.clone(), batch_generator(0, 1, 2)), aug(x.clone(), batch_generator(0, 1, 2))
    c = aug(x.clone(), batch_generator(0, 1, 3))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.allclose(a, x, atol=1e-3)


def test_seed002_brightness_only_darkens() -> None:
    x = torch.full((64, 1, 8, 8), 0.8)
    out = Augment("seed002", 8)(x, batch_generator(3, 0, 0))
    means = out.mean(dim=(1, 2, 3))
    assert float(means.max()) <= 0.8 + 1e-5 and float(means.min()) < 0.4  # x * U(0.2, 1.0)


def test_none_policy_is_identity() -> None:
    x = torch.rand(2, 1, 8, 8)
    assert Augment("none", 8)(x, batch_generator(0, 0, 0)) is x


def test_config_file_yaml_reads_exponent_floats_as_numbers(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\nweight_decay: 5e-2\nmax_minutes: 2e1\nmodel: seed_cnn2\n")
    cfg = TrainConfig.from_file(path)
    assert (cfg.lr, cfg.weight_decay, cfg.max_minutes, cfg.model) == (1e-4, 0.05, 20.0, "seed_cnn2")
    path.write_text("label_smoothing: lots\n")
    with pytest.raises(ConfigError, match="label_smoothing must be a number"):
        TrainConfig.from_file(path)
