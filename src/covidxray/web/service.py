"""The prediction use-case behind ``POST /api/v1/predict``: decode, predict, explain, audit, optionally keep.

Blocking work (decoding, the network, PNG encoding, the audit insert) runs here, in a worker thread: the app
calls :meth:`PredictionService.run` through ``anyio.to_thread`` with at most ``settings.workers`` requests at
once (forward passes are thread-safe and release the GIL). Grad-CAM is serialised by a lock: its hooks keep
per-call state.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import anyio

from covidxray.imageio import ImageLoadError, LoadedImage, load_image_bytes
from covidxray.web.audit import AuditLog, AuditRecord
from covidxray.web.preview import render_preview
from covidxray.web.schemas import ImagePrediction
from covidxray.web.settings import WebSettings
from covidxray.web.uploads import Upload, UploadError, keep_upload


class PredictionLike(Protocol):
    label: str
    probabilities: dict[str, float]
    warnings: list[str]
    error: Any


class PredictorLike(Protocol):
    """What the web app needs of :class:`covidxray.prediction.predictor.Predictor`."""

    def predict(self, image: Any) -> PredictionLike: ...

    def predict_batch(self, items: Sequence[Any]) -> Sequence[PredictionLike]: ...

    def explain(self, image: Any) -> bytes: ...

    def info(self) -> dict[str, Any]: ...


def recorded_version(info: dict[str, Any]) -> str:
    """The model version recorded with every prediction: the backend's ``version`` from the model card."""
    return str(info.get("version") or f"{info.get('architecture', 'model')}@{info.get('created', 'unknown')}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class PredictionService:
    """Holds the loaded predictor, the audit log and the settings for the lifetime of the app."""

    def __init__(self, predictor: PredictorLike, settings: WebSettings, audit: AuditLog | None = None):
        self.predictor = predictor
        self.settings = settings
        self.audit = audit
        self.info = dict(predictor.info())
        self.model_version = recorded_version(self.info)
        self.can_explain = self.info.get("backend", "torch") == "torch"
        self._explain_lock = threading.Lock()
        self.limiter = anyio.CapacityLimiter(settings.workers)  # create inside the event loop (the lifespan)

    def decode(self, upload: Upload) -> LoadedImage:
        """Decode with the project's one image loader; an undecodable image becomes a 422 naming the file."""
        try:
            return load_image_bytes(upload.data, upload.filename)
        except ImageLoadError as exc:
            raise UploadError(
                422, "undecodable_image", f"{upload.filename}: {exc.detail}", upload.filename, exc.hint
            ) from exc

    def run(
        self, uploads: Sequence[Upload], explain: bool = False, preview: bool = False
    ) -> list[ImagePrediction]:
        """Predict every upload, or refuse the whole request if one cannot be decoded (nothing is audited then)."""
        if explain and not self.can_explain:
            raise UploadError(
                400,
                "explain_unavailable",
                "Grad-CAM (explain=true) needs the torch backend; "
                f"this server runs the {self.info.get('backend')} backend",
                hint="restart with --backend torch, or ask without explain",
            )
        if self.settings.keep_uploads is not None:
            for upload in uploads:
                keep_upload(upload, self.settings.keep_uploads)
        images = [self.decode(u) for u in uploads]
        preds = (
            list(self.predictor.predict_batch(images))
            if len(images) > 1
            else [self.predictor.predict(images[0])]
        )
        for upload, pred in zip(uploads, preds, strict=True):
            if pred.error:
                raise UploadError(
                    422, "undecodable_image", f"{upload.filename}: {pred.error}", upload.filename
                )
        overlays: list[bytes | None] = [None] * len(images)
        if explain:
            with self._explain_lock:
                overlays = [self.predictor.explain(img) for img in images]
        results = [
            ImagePrediction(
                file=upload.filename,
                sha256=upload.sha256,
                label=pred.label,
                probabilities={k: float(v) for k, v in pred.probabilities.items()},
                warnings=[str(w) for w in pred.warnings],
                width=img.width,
                height=img.height,
                format=img.format,
                preview_png=_b64(render_preview(img.pixels, self.settings.preview_max_side))
                if preview
                else None,
                gradcam_png=_b64(overlay) if overlay is not None else None,
            )
            for upload, img, pred, overlay in zip(uploads, images, preds, overlays, strict=True)
        ]
        if self.audit is not None:
            self.audit.record(
                AuditRecord(r.sha256, self.model_version, r.label, r.probabilities, r.warnings)
                for r in results
            )
        return results
