"""``covidxray --kernels avx2``: PyTorch, oneDNN and MKL pinned to AVX2 kernels, so AVX2 and AVX512 machines train
the same weights (measured on the real recipe: BENCHMARKS.md, "Same weights on AVX2 and AVX512 machines")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from covidxray.cli import main
from covidxray.kernels import PINS, KernelPinError, pin_kernels, pinned_kernels
from test_training_data import make_manifest

CLI = "import sys; from covidxray.cli import main; sys.exit(main(sys.argv[1:]))"


def _env(**extra: str) -> dict[str, str]:
    """This environment without any pin (as a user's shell would be), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in PINS["avx2"]}
    return {**env, **extra}


def _capability(args: list[str], env: dict[str, str]) -> str:
    code = (
        "import sys; from covidxray.kernels import pin_kernels, pinned_kernels; "
        "pin_kernels(sys.argv[1]); import torch; "
        "print(torch.backends.cpu.get_cpu_capability(), pinned_kernels())"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


NATIVE = _capability(["native"], _env()).split()[0]
needs_avx2 = pytest.mark.skipif(
    NATIVE not in ("AVX2", "AVX512"), reason=f"this CPU's PyTorch kernels are {NATIVE}, not AVX2 or better"
)


@needs_avx2
def test_the_pin_makes_torch_use_avx2_kernels_in_a_new_process() -> None:
    assert _capability(["avx2"], _env()) == "AVX2 avx2"
    assert _capability(["native"], _env()) == f"{NATIVE} None"
    with pytest.raises(ValueError, match="unknown kernels 'avx9'"):
        pin_kernels("avx9")


def test_the_pin_refuses_once_torch_is_loaded_with_other_kernels(monkeypatch, tmp_path, capsys) -> None:
    import torch  # noqa: F401 - loaded, as in this test process

    for k in PINS["avx2"]:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(KernelPinError, match="torch is already loaded"):
        pin_kernels("avx2")
    assert pinned_kernels() is None and "ATEN_CPU_CAPABILITY" not in os.environ  # nothing half-set
    assert main(["--kernels", "avx2", "train", "--manifest", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "start a new process with --kernels avx2" in err and "ATEN_CPU_CAPABILITY=avx2" in err
    # after the command too: the same flag, the same refusal
    assert main(["train", "--manifest", str(tmp_path / "m.csv"), "--kernels", "avx2"]) == 2
    assert "start a new process with --kernels avx2" in capsys.readouterr().err
    for k, v in PINS["avx2"].items():  # set before Python started: accepted
        monkeypatch.setenv(k, v)
    pin_kernels("avx2")
    assert pinned_kernels() == "avx2"


@needs_avx2
def test_a_pinned_training_records_its_kernels_and_on_avx512_trains_other_weights(tmp_path: Path) -> None:
    """A short real training with --kernels avx2: the bundle says so; with the same seed, the environment set by
    hand gives the same bytes; and on an AVX512 machine the native kernels give other weights, so the pin acts."""
    manifest = make_manifest(tmp_path / "data")

    def train(out: str, kernels: list[str], env: dict[str, str]) -> Path:
        argv = [*kernels, "train", "--manifest", str(manifest), "--model", "seed_cnn6", "--image-size", "32",
                "--epochs", "1", "--batch-size", "8", "--threads", "1", "--checkpoint-every", "0", "--no-progress",
                "--init", "glorot", "--out", str(tmp_path / out), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
        res = subprocess.run(
            [sys.executable, "-c", CLI, *argv], env=env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stderr
        return tmp_path / out / "model"

    pinned = train("pinned", ["--kernels", "avx2"], _env())
    versions = json.loads((pinned / "config.json").read_text())["versions"]
    assert versions["kernels"] == "avx2" and versions["torch_cpu_capability"] == "AVX2"
    by_hand = train("by_hand", [], _env(**PINS["avx2"]))
    assert (by_hand / "model.safetensors").read_bytes() == (pinned / "model.safetensors").read_bytes()
    native = train("native", [], _env())
    versions = json.loads((native / "config.json").read_text())["versions"]
    assert "kernels" not in versions and versions["torch_cpu_capability"] == NATIVE
    if NATIVE == "AVX512":
        a, b = load_file(str(pinned / "model.safetensors")), load_file(str(native / "model.safetensors"))
        assert any(not (a[k] == b[k]).all() for k in a), "AVX512 and AVX2 kernels gave the same weights"


@needs_avx2
def test_ray_trials_carry_the_pin_to_workers_ray_started(ray_local, monkeypatch) -> None:
    """Ray's workers do not inherit this process's environment: the trials' tasks get the pin as a runtime_env, so
    `covidxray --kernels avx2 crossval --engine ray` trains with the kernels it would use locally."""
    from covidxray.evaluation.ray_trials import ray_runner
    from covidxray.kernels import kernels_in_use

    run = ray_runner(None, 1.0, log=lambda m: None)
    if not any(k in os.environ for k in PINS["avx2"]):
        assert run(kernels_in_use, [{}]) == [(NATIVE, None)]
    for k, v in PINS["avx2"].items():
        monkeypatch.setenv(k, v)
    assert run(kernels_in_use, [{}]) == [("AVX2", "avx2")]
