"""The ONNX Runtime backend: ``model.onnx`` from ``covidxray export``, run without importing torch.

The file carries the bundle's facts in its metadata (``covidxray.config``: classes, preprocessing, operating
point, guard), so nothing else is needed next to it. Only NumPy, Pillow, onnxruntime and json are used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from covidxray.bundle import CONFIG_FILE, ONNX_CONFIG_KEY, config_differences, config_digest
from covidxray.onnxrt import cpu_session, embedded_config
from covidxray.prediction.backend import ModelLoadError

CONFIG_KEY = ONNX_CONFIG_KEY
VERSION_KEY = "covidxray.model_version"
INPUT_NAME = "image"
OUTPUTS = ("probabilities", "features")


def make_session(path: str | Path, threads: int = 2) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads and every graph optimisation enabled."""
    return cpu_session(path, threads, ModelLoadError)


def _refuse_stale(path: Path, embedded: dict[str, Any]) -> None:
    """Raise when the bundle's ``config.json`` beside the file decides differently from the config the export
    carries (e.g. ``covidxray evaluate`` rewrote the operating point after the export, by hand or by an older
    covidxray): the torch and ONNX backends would then label images differently."""
    cfg_path = path.parent / CONFIG_FILE
    try:
        on_disk = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return  # no readable bundle config beside it: the export stands alone
    if not isinstance(on_disk, dict) or config_digest(on_disk) == config_digest(embedded):
        return
    raise ModelLoadError(
        f"{path} is stale: {cfg_path} changed after the export "
        f"({', '.join(config_differences(on_disk, embedded))} differ), so the ONNX and torch backends would "
        f"decide differently. Refresh it with 'covidxray export --model {path.parent}', or use --backend torch"
    )


class OnnxBackend:
    """Runs an exported model; its probabilities agree with the torch backend to 1e-4."""

    name = "onnx"

    def __init__(self, path: str | Path, threads: int = 2):
        self.threads = max(1, int(threads))
        self.session = make_session(path, self.threads)
        self.config, meta = embedded_config(
            self.session,
            CONFIG_KEY,
            path,
            ModelLoadError,
            "this ONNX file was not written by 'covidxray export'",
        )
        _refuse_stale(Path(path), self.config)
        arch = self.config.get("architecture", {})
        self.version = (
            meta.get(VERSION_KEY) or f"{arch.get('name', 'model')}@{self.config.get('created', '')}"
        )
        self.source = str(path)
        names = [o.name for o in self.session.get_outputs()]
        self._outputs = [n for n in OUTPUTS if n in names]

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Model inputs (N, C, S, S) float32 in [0, 1] -> probabilities (N, K), features (N, F) or None."""
        out = self.session.run(self._outputs, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
        return out[0], (out[1] if len(out) > 1 else None)
