"""Predict from a saved model: ``covidxray.load_model(path).predict(image)`` -> :class:`Prediction`.

Two interchangeable backends compute the same thing from the same bundle facts (classes, preprocessing,
operating point, input guard):

* ``"torch"``: the bundle folder (``config.json`` + ``model.safetensors``); also gives Grad-CAM explanations;
* ``"onnx"``: ``model.onnx`` written by ``covidxray export`` (facts in its metadata), through ONNX Runtime,
  without importing torch.

The label follows the decision rule of :mod:`covidxray.prediction.backend`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidxray.about import NOT_FOR_CLINICAL_USE
from covidxray.bundle import ModelLoadError, resolve_model_path
from covidxray.imageio import ImageLoadError, LoadedImage
from covidxray.prediction.backend import Backend, decide_label, decision_rule
from covidxray.prediction.guard import InputGuard
from covidxray.prediction.inputs import ImageInput, UnsupportedInput, describe, to_loaded_image
from covidxray.preprocess import Preprocessing

DEFAULT_BATCH_SIZE = 32


__all__ = ["ModelLoadError", "Prediction", "Predictor", "load_predictor"]


@dataclass
class Prediction:
    """The result for one image.

    ``label`` is None and ``error`` says why when the image could not be used (``error_reason`` is the
    loader's reason code: missing, empty, not_an_image, truncated, too_small, unsupported_dicom; or ``refused``
    when a strict predictor's input guard flagged it). ``warnings`` lists the input guard's findings.
    """

    path: str | None
    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    error_reason: str | None = None
    covid_threshold: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Predictor:
    """A loaded model ready to predict; build it with :func:`load_predictor` (or ``covidxray.load_model``).

    ``strict=True`` refuses images the input guard flags (their ``error_reason`` is ``"refused"``).
    """

    def __init__(self, backend: Backend, strict: bool = False):
        self.backend = backend
        self.config = backend.config
        self.classes: list[str] = list(self.config["classes"])
        self.preprocessing = Preprocessing.from_dict(self.config["preprocessing"])
        self.operating_point: dict[str, Any] | None = self.config.get("operating_point")
        self.guard = InputGuard.from_config(self.config.get("guard"))
        self.strict = strict
        self._explainer = None

    # -- prediction -----------------------------------------------------------------------------------------
    def predict(self, image: ImageInput) -> Prediction:
        """Predict one image (path, bytes, array, PIL image or LoadedImage). Never raises for a bad image:
        the result's ``error`` says what is wrong."""
        return next(self.iter_predict([image], batch_size=1))

    def predict_batch(
        self, items: Iterable[ImageInput], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[Prediction]:
        """Predict several images, in order; unreadable ones become results with an ``error``."""
        return list(self.iter_predict(items, batch_size=batch_size))

    def iter_predict(
        self, items: Iterable[ImageInput], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[Prediction]:
        """Stream predictions over any number of images in fixed-size batches (bounded memory)."""
        chunk: list[ImageInput] = []
        for item in items:
            chunk.append(item)
            if len(chunk) == batch_size:
                yield from self._predict_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk)

    def _predict_chunk(self, items: list[ImageInput]) -> list[Prediction]:
        results: list[Prediction | None] = [None] * len(items)
        loaded: list[tuple[int, LoadedImage]] = []
        canon: list[np.ndarray] = []
        for i, item in enumerate(items):
            name = describe(item)
            try:
                img = to_loaded_image(item)
                c = self.preprocessing.canonical(img.pixels)
            except ImageLoadError as exc:
                results[i] = Prediction(name, None, error=str(exc), error_reason=exc.reason)
                continue
            except UnsupportedInput:
                raise
            except Exception as exc:  # e.g. PIL's DecompressionBombError: one bad file must not stop a batch
                results[i] = Prediction(
                    name,
                    None,
                    error=f"{name or '<image>'}: cannot be used: {type(exc).__name__}: {exc}",
                    error_reason="error",
                )
                continue
            loaded.append((i, img))
            canon.append(c)
        if loaded:
            probs, feats = self.backend.run(self.preprocessing.to_input(np.stack(canon)))
            for j, (i, img) in enumerate(loaded):
                warnings = self.guard.check(img, feats[j] if feats is not None else None)
                results[i] = self._result(describe(items[i]), probs[j], warnings)
        return [r for r in results if r is not None]

    def _result(self, name: str | None, probs: np.ndarray, warnings: list[str]) -> Prediction:
        if self.strict and warnings:
            return Prediction(
                name,
                None,
                warnings=warnings,
                error_reason="refused",
                error="refused by the input guard: " + "; ".join(warnings),
            )
        label, threshold = decide_label(probs, self.classes, self.operating_point)
        return Prediction(
            name,
            label,
            {c: float(p) for c, p in zip(self.classes, probs, strict=True)},
            warnings,
            covid_threshold=threshold,
        )

    # -- explanation ---------------------------------------------------------------------------------------
    def explain(self, image: ImageInput) -> bytes:
        """A Grad-CAM overlay PNG for one image (torch backend): the image, the heatmap of the predicted class,
        the class and its probability, and the not-for-clinical-use line. Raises ImageLoadError on a bad image."""
        if self.backend.name != "torch":
            raise RuntimeError("Grad-CAM needs the torch backend: load the model with backend='torch'")
        if self._explainer is None:
            from covidxray.prediction.explain import GradCamExplainer

            self._explainer = GradCamExplainer(self.backend.model, self.preprocessing, self.classes)  # type: ignore[attr-defined]
        img = to_loaded_image(image)
        probs, _ = self.backend.run(self.preprocessing(img.pixels)[None])
        label, _ = decide_label(probs[0], self.classes, self.operating_point)
        return self._explainer.overlay_png(img, label, float(probs[0][self.classes.index(label)]))

    # -- model card ----------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Model card facts for people and the web app: classes, architecture, version, metrics, operating
        point, data, preprocessing, guard, intended use, backend."""
        c = self.config
        arch = c.get("architecture", {})
        fd = (c.get("guard") or {}).get("feature_distance")
        return {
            "classes": self.classes,
            "architecture": arch.get("name") if isinstance(arch, dict) else str(arch),
            "architecture_kwargs": arch.get("kwargs", {}) if isinstance(arch, dict) else {},
            "version": self.backend.version,
            "created": c.get("created", ""),
            "versions": c.get("versions", {}),
            "metrics": c.get("metrics", {}),
            "operating_point": self.operating_point,
            "decision_rule": self.decision_rule(),
            "data": c.get("data", {}),
            "training": c.get("training", {}),
            "preprocessing": self.preprocessing.to_dict(),
            "guard": {
                "limits": self.guard.limits,
                "feature_distance": None
                if fd is None
                else {
                    k: fd[k]
                    for k in ("method", "threshold", "quantile", "fitted_on", "components")
                    if k in fd
                },
            },
            "intended_use": c.get("intended_use", ""),
            "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
            "backend": self.backend.name,
            "source": self.backend.source,
        }

    def decision_rule(self) -> str:
        return decision_rule(self.classes, self.operating_point)

    def __repr__(self) -> str:
        return f"Predictor({self.backend.version!r}, backend={self.backend.name!r}, classes={self.classes})"


# -- loading -------------------------------------------------------------------------------------------------
def load_predictor(path: str | Path | None = None, backend: str = "torch", strict: bool = False) -> Predictor:
    """Load a bundle folder (torch) or its ONNX export (onnx); ``path=None`` loads the shipped default model.

    Raises :class:`ModelLoadError` with what to do when the model cannot be found or loaded.
    """
    p = resolve_model_path(path, backend)
    if backend == "onnx":
        from covidxray.prediction.onnx_backend import OnnxBackend

        return Predictor(OnnxBackend(p), strict=strict)
    from covidxray.prediction.torch_backend import TorchBackend

    return Predictor(TorchBackend(p), strict=strict)
