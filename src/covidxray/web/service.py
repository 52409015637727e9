"""The prediction use-case behind ``POST /api/v1/predict``: decode, predict, explain, audit, optionally keep.

Blocking work (decoding, the network, PNG encoding, the audit insert) runs here, in a worker thread: the app
calls :meth:`PredictionService.run` through ``anyio.to_thread`` with at most ``settings.workers`` requests at
once (forward passes are thread-safe and release the GIL). Grad-CAM is serialised by a lock: its hooks keep
per-call state. A request's images are decoded, predicted and dropped one at a time, so at most one full-size
decoded image per running request is ever held.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import anyio

from covidxray.imageio import ImageLoadError, LoadedImage, load_image_bytes
from covidxray.web.audit import AuditLog, AuditRecord
from covidxray.web.kept import KeptUploads
from covidxray.web.preview import render_preview
from covidxray.web.schemas import ImagePrediction
from covidxray.web.settings import WebSettings
from covidxray.web.uploads import Upload, UploadError


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

    def __init__(
        self,
        predictor: PredictorLike,
        settings: WebSettings,
        audit: AuditLog | None = None,
        kept: KeptUploads | None = None,
    ):
        self.predictor = predictor
        self.settings = settings
        self.audit = audit
        self._kept = kept
        self._kept_lock = threading.Lock()
        self.info = dict(predictor.info())
        self.model_version = recorded_version(self.info)
        self.can_explain = self.info.get("backend", "torch") == "torch"
        self._explain_lock = threading.Lock()
        self.limiter = anyio.CapacityLimiter(settings.workers)  # create inside the event loop (the lifespan)
        self.upload_slots = anyio.Semaphore(settings.max_concurrent_uploads)

    def kept_uploads(self) -> KeptUploads | None:
        """The ``--keep-uploads`` folder, opened (and pruned) on first use; None when uploads are not kept.

        ``covidxray serve`` opens it before it starts, so an unusable folder stops the server there (exit 6).
        """
        if self.settings.keep_uploads is None:
            return None
        with self._kept_lock:
            if self._kept is None:
                s = self.settings
                self._kept = KeptUploads(
                    s.keep_uploads, s.retention_days, int(s.keep_uploads_max_mb * 1024 * 1024)
                )
            return self._kept

    def decode(self, upload: Upload) -> LoadedImage:
        """Decode with the project's one image loader; an undecodable image becomes a 422 naming the file."""
        try:
            return load_image_bytes(upload.data, upload.filename, max_pixels=self.settings.max_pixels)
        except ImageLoadError as exc:
            if exc.reason == "too_large":
                raise UploadError(
                    413, "image_too_large", f"{upload.filename}: {exc.detail}", upload.filename, exc.hint
                ) from exc
            raise UploadError(
                422, "undecodable_image", f"{upload.filename}: {exc.detail}", upload.filename, exc.hint
            ) from exc

    def _explanation(self, image: LoadedImage) -> tuple[bytes, float | None]:
        """Grad-CAM overlay PNG and its in-lung share (None when the predictor cannot measure it)."""
        details = getattr(self.predictor, "explanation", None)
        if details is None:
            return self.predictor.explain(image), None
        e = details(image)
        return e.png, e.lung_share

    def _lung_masks(self, images: list[LoadedImage]) -> list[Any]:
        """Lung masks for the preview outlines (Nones when the predictor has no segmenter)."""
        segment = getattr(self.predictor, "segment_lungs", None)
        if segment is None:
            return [None] * len(images)
        return [None if s is None else s.mask for s in segment(images, always=True)]

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
        kept = self.kept_uploads()
        if kept is not None:
            for upload in uploads:
                kept.keep(upload)
        results = []
        for upload in uploads:  # one at a time: one full-size decoded image held, never all of them
            img = self.decode(upload)
            pred = self.predictor.predict(img)
            if pred.error:
                raise UploadError(
                    422, "undecodable_image", f"{upload.filename}: {pred.error}", upload.filename
                )
            overlay = None
            if explain:
                with self._explain_lock:
                    overlay = self._explanation(img)
            mask = self._lung_masks([img])[0] if preview else None
            width, height = img.original_size or (img.width, img.height)
            results.append(
                ImagePrediction(
                    file=upload.filename,
                    sha256=upload.sha256,
                    label=pred.label,
                    probabilities={k: float(v) for k, v in pred.probabilities.items()},
                    decision=pred.decision,
                    warnings=[str(w) for w in pred.warnings],
                    width=width,
                    height=height,
                    format=img.format,
                    preview_png=_b64(render_preview(img.pixels, self.settings.preview_max_side, mask))
                    if preview
                    else None,
                    gradcam_png=_b64(overlay[0]) if overlay is not None else None,
                    gradcam_lung_share=overlay[1] if overlay is not None else None,
                    lungs=getattr(pred, "lungs", None),
                )
            )
            del img
        if self.audit is not None:
            self.audit.record(
                AuditRecord(r.sha256, self.model_version, r.label, r.probabilities, r.warnings)
                for r in results
            )
        return results
