"""The saved-model bundle: rebuilt from config.json + safetensors alone, no pickle, clear version errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from covidxray.bundle import FORMAT_VERSION, BundleError, load_bundle, read_config, update_bundle


def test_bundle_round_trip_gives_identical_outputs(tiny_bundle: Path) -> None:
    a, b = load_bundle(tiny_bundle), load_bundle(tiny_bundle)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
    cfg = json.loads((tiny_bundle / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION and "not_for_clinical_use" in cfg and cfg["intended_use"]
    assert cfg["versions"]["torch"] and cfg["preprocessing"]["image_size"] == 64


def test_weights_are_safetensors_not_pickle(tiny_bundle: Path) -> None:
    raw = (tiny_bundle / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: length-prefixed JSON header, then raw tensors
    assert header["__metadata__"]["format"] == "covidxray-bundle"
    assert not raw.startswith(b"\x80") and b"PK" not in raw[:4]  # neither a pickle nor a torch.save zip


def test_unknown_format_version_names_both_versions(tiny_bundle: Path, tmp_path: Path) -> None:
    future = tmp_path / "future"
    shutil.copytree(tiny_bundle, future)
    cfg = json.loads((future / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (future / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError) as err:
        load_bundle(future)
    assert f"version {FORMAT_VERSION + 1}" in str(err.value) and f"1 to {FORMAT_VERSION}" in str(err.value)


def test_missing_or_broken_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_config(tmp_path)


def test_update_bundle_keeps_weights_and_unknown_keys(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["from_a_later_version"] = {"kept": True}
    (copy / "config.json").write_text(json.dumps(cfg))
    update_bundle(copy, operating_point={"class": "covid", "threshold": 0.3})
    after = json.loads((copy / "config.json").read_text())
    assert after["operating_point"]["threshold"] == 0.3 and after["from_a_later_version"] == {"kept": True}
    assert load_bundle(copy).config.operating_point["threshold"] == 0.3
