"""The PyTorch backend: a bundle folder rebuilt by :func:`covidxray.bundle.load_bundle`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidxray.bundle import WEIGHTS_FILE, BundleError, load_bundle
from covidxray.prediction.backend import ModelLoadError, weights_version


class TorchBackend:
    """Runs the bundle's :class:`covidxray.models.base.XRayNet` in eval mode on the CPU."""

    name = "torch"

    def __init__(self, bundle_path: str | Path):
        try:
            bundle = load_bundle(bundle_path)
        except (BundleError, OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"{bundle_path}: cannot load the model bundle: {exc}") from exc
        self.model = bundle.model.eval()
        self.config: dict[str, Any] = bundle.config.to_dict()
        self.version = weights_version(bundle.config.architecture, Path(bundle_path) / WEIGHTS_FILE)
        self.source = str(bundle_path)

    @property
    def threads(self) -> int:
        """torch's intra-op threads (process-wide)."""
        return torch.get_num_threads()

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs (N, C, S, S) in [0, 1] -> probabilities (N, K), features (N, F)."""
        with torch.inference_mode():
            probs, feats = self.model.probabilities_and_features(torch.from_numpy(x))
        return probs.float().numpy(), feats.float().numpy()
