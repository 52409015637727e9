"""Predict from a saved model: ``covidxray.load_model(path).predict(image)`` -> :class:`Prediction`.

Two interchangeable backends compute the same thing from the same bundle facts (classes, preprocessing,
operating point, input guard):

* ``"torch"``: the bundle folder (``config.json`` + ``model.safetensors``); also gives Grad-CAM explanations;
* ``"onnx"``: ``model.onnx`` written by ``covidxray export`` (facts in its metadata), through ONNX Runtime,
  without importing torch.

How the label is decided
------------------------
Without an operating point the label is the most probable class. A bundle stores named operating points
(``screening``, ``balanced``, maybe ``site``; see :mod:`covidxray.decision`) and the name of the one that decides:
the label is that point's class whenever its probability is ``>= t``; otherwise it is the most probable of the
*other* classes. ``Prediction.decision`` says which point decided, its threshold, the probability compared with it
and why in words; ``Prediction.covid_threshold`` holds ``t`` (None when the plain argmax was used). The
probabilities themselves are never changed. The rule itself lives in :mod:`covidxray.decision`.

Two options trade time for steadier probabilities (their cost and effect: ``benchmarks/bench_tta.py``):

* ``tta=N``: test-time augmentation, the mean probability over the first N fixed views of
  :data:`covidxray.preprocess.TTA_VIEWS` (identity, zoom, gamma, shifts, flip), made by the bundle's own
  :class:`~covidxray.preprocess.Preprocessing`; about N times the model's cost;
* an ensemble (``load_predictor([a, b, ...])``): the mean probability of several bundles that predict the same
  classes (:mod:`covidxray.ensemble`), each preprocessing with its own definition. The first member's operating
  points and decision decide (``operating_point_from`` picks another member), its features feed the input
  guard and its network draws the Grad-CAM.

For ``lungcrop`` models the lung mask is computed once per image; the TTA views are made from the cropped
canonical image, and every view and member goes through the same decision (:meth:`Predictor.decide`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidxray.about import NOT_FOR_CLINICAL_USE
from covidxray.bundle import ModelLoadError, resolve_model_path
from covidxray.decision import read_operating_points, rule_in_words
from covidxray.ensemble import EnsembleError, average_probabilities, class_columns
from covidxray.imageio import ImageLoadError, LoadedImage
from covidxray.prediction.backend import Backend, Decision, decide
from covidxray.prediction.guard import InputGuard
from covidxray.prediction.inputs import ImageInput, UnsupportedInput, describe, to_loaded_image
from covidxray.preprocess import NewerPreprocessingError, Preprocessing, mean_over_views, tta_views
from covidxray.segmentation.segmenter import default_segmenter_facts
from covidxray.viewcheck import default_view_facts

DEFAULT_BATCH_SIZE = 32


__all__ = ["Explanation", "ModelLoadError", "Prediction", "Predictor", "load_predictor"]


def _cannot_use(name: str | None, exc: Exception) -> str:
    return f"{name or '<image>'}: cannot be used: {type(exc).__name__}: {exc}"


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
    decision: dict[str, Any] | None = (
        None  # Decision.to_dict(): point, class, threshold, probability, explanation
    )
    lungs: dict[str, Any] | None = None  # lung-field facts: area_fraction, components, balance, quality

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Explanation:
    """A Grad-CAM explanation: the overlay PNG, the class it explains, the heatmap's share inside the lungs."""

    png: bytes
    label: str
    lung_share: float | None


@dataclass(frozen=True)
class Member:
    """One model of a predictor: its backend, its own preprocessing, and the columns that put its
    probabilities in the predictor's class order."""

    backend: Backend
    preprocessing: Preprocessing
    columns: np.ndarray


class Predictor:
    """A loaded model ready to predict; build it with :func:`load_predictor` (or ``covidxray.load_model``).

    ``backend`` is one backend or a sequence of them (an ensemble: probabilities averaged; the first member's
    classes, guard and features lead; ``operating_point_from`` is the member whose stored operating points and
    decision decide). ``tta`` is the number of test-time views averaged (1 or None: none). ``strict=True`` refuses
    images the input guard flags (their ``error_reason`` is ``"refused"``). ``lung_check=True`` segments the lung
    fields (shipped segmenter, ONNX) for the guard's lung-field check; models with ``resize: lungcrop`` always
    segment, to crop (once per image, shared by the TTA views and the ensemble's members).
    """

    def __init__(
        self,
        backend: Backend | Sequence[Backend],
        strict: bool = False,
        tta: int | None = None,
        operating_point_from: int = 0,
        lung_check: bool = True,
    ):
        backends = list(backend) if isinstance(backend, list | tuple) else [backend]
        if not backends:
            raise EnsembleError("an ensemble needs at least one model")
        self.backend = backends[0]
        self.config = self.backend.config
        self.classes: list[str] = list(self.config["classes"])
        self.members = [
            Member(
                b,
                Preprocessing.from_dict(b.config["preprocessing"]),
                class_columns(self.classes, list(b.config["classes"]), b.source),
            )
            for b in backends
        ]
        self.preprocessing = self.members[0].preprocessing
        if not 0 <= operating_point_from < len(backends):
            raise EnsembleError(
                f"operating_point_from={operating_point_from}: the ensemble has {len(backends)} model(s)"
            )
        self.operating_points, self.decision = read_operating_points(backends[operating_point_from].config)
        self.operating_point: dict[str, Any] | None = (
            self.operating_points.get(self.decision) if self.decision else None
        )  # the deciding point
        self.operating_point_from = operating_point_from
        self.tta_views = tta_views(1 if tta is None else tta)
        self.guard = InputGuard.from_config(self.config.get("guard"))
        self.strict = strict
        self.lung_check = lung_check
        self._segmenter = None
        self._view_check = None
        self._explainer = None

    @property
    def version(self) -> str:
        """The model's version; an ensemble's is its members' joined by ``+``."""
        return "+".join(m.backend.version for m in self.members)

    @property
    def options(self) -> str:
        """What the predictor averages, in words: ``""`` for one model without TTA."""
        parts = []
        if len(self.members) > 1:
            parts.append(f"ensemble of {len(self.members)} models (mean probability)")
        if len(self.tta_views) > 1:
            parts.append(f"TTA over {len(self.tta_views)} views ({', '.join(self.tta_views)})")
        return "; ".join(parts)

    def probabilities(self, canonical: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Each member's canonical images (N, S_m, S_m) -> the combined probabilities (N, K) and the first
        member's features of the identity view (N, F) or None."""
        n = len(self.tta_views)
        probs, feats = [], None
        for k, (m, c) in enumerate(zip(self.members, canonical, strict=True)):
            p, f = m.backend.run(m.preprocessing.view_inputs(c, n))
            probs.append(mean_over_views(np.asarray(p), n))
            if k == 0 and f is not None:
                feats = np.asarray(f)[::n]
        return average_probabilities(probs, [m.columns for m in self.members]), feats

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
        for i, item in enumerate(items):
            name = describe(item)
            try:
                loaded.append((i, to_loaded_image(item)))
            except ImageLoadError as exc:
                results[i] = Prediction(name, None, error=str(exc), error_reason=exc.reason)
            except UnsupportedInput:
                raise
            except Exception as exc:  # e.g. PIL's DecompressionBombError: one bad file must not stop a batch
                results[i] = Prediction(name, None, error=_cannot_use(name, exc), error_reason="error")
        lungs = self.segment_lungs([img for _, img in loaded])
        views = self.check_views([img for _, img in loaded])
        kept: list[tuple[int, LoadedImage, Any, Any]] = []
        canon: list[list[np.ndarray]] = [[] for _ in self.members]
        for (i, img), seg, view in zip(loaded, lungs, views, strict=True):
            mask = seg.mask if seg is not None else None
            try:  # the lung mask is computed once per image; every member crops with it
                c = [m.preprocessing.canonical(img.pixels, mask) for m in self.members]
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop a batch
                name = describe(items[i])
                results[i] = Prediction(name, None, error=_cannot_use(name, exc), error_reason="error")
                continue
            kept.append((i, img, seg, view))
            for k, ck in enumerate(c):
                canon[k].append(ck)
        if kept:
            probs, feats = self.probabilities([np.stack(ck) for ck in canon])
            for j, (i, img, seg, view) in enumerate(kept):
                facts = seg.facts if seg is not None else None
                warnings = self.guard.check(img, feats[j] if feats is not None else None, facts, view)
                results[i] = self._result(describe(items[i]), probs[j], warnings, facts)
        return [r for r in results if r is not None]

    @property
    def needs_lungs(self) -> bool:
        """True when a member crops to the lungs (``resize: lungcrop``)."""
        return any(m.preprocessing.needs_lungs for m in self.members)

    def segment_lungs(self, images: list[LoadedImage], always: bool = False) -> list[Any]:
        """Lung segmentations (:class:`covidxray.segmentation.LungSegmentation`) of decoded images, or Nones
        when lung fields are not used (not ``always``, no ``lungcrop`` and ``lung_check=False``)."""
        if not images or not (always or self.lung_check or self.needs_lungs):
            return [None] * len(images)
        if self._segmenter is None:
            from covidxray.segmentation.segmenter import default_segmenter

            # as many threads as the model's backend: a 1-thread predictor (a 1-CPU Ray actor) stays on its core
            self._segmenter = default_segmenter(
                "onnx", threads=getattr(self.members[0].backend, "threads", 2)
            )
        return self._segmenter.segment_many(images)

    def check_views(self, images: list[LoadedImage]) -> list[Any]:
        """The view check's :class:`~covidxray.viewcheck.ViewFacts` of decoded images (with the lung check:
        both ask whether the image is a frontal chest X-ray), or Nones with ``lung_check=False``."""
        if not images or not self.lung_check:
            return [None] * len(images)
        if self._view_check is None:
            from covidxray.viewcheck import default_view_check

            self._view_check = default_view_check(threads=getattr(self.members[0].backend, "threads", 2))
        return self._view_check.facts([img.pixels for img in images])

    def _result(
        self, name: str | None, probs: np.ndarray, warnings: list[str], lungs: Any = None
    ) -> Prediction:
        facts = lungs.to_dict() if lungs is not None else None
        if self.strict and warnings:
            return Prediction(
                name,
                None,
                warnings=warnings,
                error_reason="refused",
                error="refused by the input guard: " + "; ".join(warnings),
                lungs=facts,
            )
        label, decision = self.decide(probs)
        return Prediction(
            name,
            label,
            {c: float(p) for c, p in zip(self.classes, probs, strict=True)},
            warnings,
            covid_threshold=decision.threshold,
            decision=decision.to_dict(label),
            lungs=facts,
        )

    def decide(self, probabilities: np.ndarray) -> tuple[str, Decision]:
        """The label of one probability vector and the :class:`~covidxray.decision.Decision` behind it."""
        return decide(probabilities, self.classes, self.operating_points, self.decision)

    # -- explanation ---------------------------------------------------------------------------------------
    def explain(self, image: ImageInput) -> bytes:
        """A Grad-CAM overlay PNG for one image (torch backend): the image, the heatmap of the predicted class,
        the lung outline, the class and its probability, the heatmap's in-lung share and the
        not-for-clinical-use line. Raises ImageLoadError on a bad image.

        The label and probability are the predictor's (with its TTA and ensemble); the heatmap is the first
        member's network on the image itself."""
        return self.explanation(image).png

    def explanation(self, image: ImageInput) -> Explanation:
        """:meth:`explain` with its facts: the overlay PNG, the explained label and the in-lung share."""
        if self.backend.name != "torch":
            raise RuntimeError("Grad-CAM needs the torch backend: load the model with backend='torch'")
        if self._explainer is None:
            from covidxray.prediction.explain import GradCamExplainer

            self._explainer = GradCamExplainer(self.backend.model, self.preprocessing, self.classes)  # type: ignore[attr-defined]
        img = to_loaded_image(image)
        seg = self.segment_lungs([img], always=True)[0]  # outline + in-lung share
        mask = seg.mask if seg is not None else None
        probs, _ = self.probabilities(
            [m.preprocessing.canonical(img.pixels, mask)[None] for m in self.members]
        )
        label, _ = self.decide(probs[0])
        png, share = self._explainer.overlay(img, label, float(probs[0][self.classes.index(label)]), mask)
        return Explanation(png, label, None if share is None or share != share else share)

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
            "version": self.version,
            "created": c.get("created", ""),
            "versions": c.get("versions", {}),
            "metrics": c.get("metrics", {}),
            "operating_point": self.operating_point,
            "operating_points": self.operating_points,
            "decision": self.decision,
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
            "lung_segmenter": default_segmenter_facts(),
            "view_check": default_view_facts(),
            "intended_use": c.get("intended_use", ""),
            "not_for_clinical_use": NOT_FOR_CLINICAL_USE,
            "backend": self.backend.name,
            "source": self.backend.source,
            "tta": {"views": len(self.tta_views), "names": list(self.tta_views)},
            "ensemble": None
            if len(self.members) == 1
            else {
                "members": [{"version": m.backend.version, "source": m.backend.source} for m in self.members],
                "combine": "mean probability",
                "operating_point_from": self.members[self.operating_point_from].backend.version,
            },
        }

    def decision_rule(self) -> str:
        """How the label follows from the probabilities, naming the deciding operating point."""
        return rule_in_words(self.classes, self.operating_points, self.decision)

    def __repr__(self) -> str:
        extra = f", tta={len(self.tta_views)}" if len(self.tta_views) > 1 else ""
        return f"Predictor({self.version!r}, backend={self.backend.name!r}, classes={self.classes}{extra})"


# -- loading -------------------------------------------------------------------------------------------------
def load_predictor(
    path: str | Path | Sequence[str | Path] | None = None,
    backend: str = "torch",
    strict: bool = False,
    tta: int | None = None,
    operating_point_from: int = 0,
) -> Predictor:
    """Load a bundle folder (torch) or its ONNX export (onnx); ``path=None`` loads the shipped default model.

    A list of paths loads an ensemble (probabilities averaged; the members must predict the same classes).
    ``tta=N`` averages over N test-time views (see :class:`Predictor`). Raises :class:`ModelLoadError` with what
    to do when a model cannot be found or loaded, or the members of an ensemble do not fit together.
    """
    paths = list(path) if isinstance(path, list | tuple) else [path]
    if not paths:
        raise ModelLoadError("an ensemble needs at least one model path")
    resolved = [resolve_model_path(p, backend) for p in paths]
    if backend == "onnx":
        from covidxray.prediction.onnx_backend import OnnxBackend as make
    else:
        from covidxray.prediction.torch_backend import TorchBackend as make  # type: ignore[assignment]
    backends = [make(p) for p in resolved]
    try:
        return Predictor(backends, strict=strict, tta=tta, operating_point_from=operating_point_from)
    except EnsembleError as exc:
        raise ModelLoadError(str(exc)) from exc
    except NewerPreprocessingError as exc:  # an ONNX file from a newer covidxray (a bundle fails earlier)
        raise ModelLoadError(f"{', '.join(map(str, resolved))}: {exc}") from exc
