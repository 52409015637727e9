"""The JSON API: ``POST /api/v1/predict``, ``GET /api/v1/model`` and ``GET /healthz``."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request

from covidxray.web.schemas import ErrorResponse, Health, ModelCard, PredictResponse, ServiceLimits
from covidxray.web.service import PredictionService
from covidxray.web.uploads import ACCEPTED_SUFFIXES, UploadError, check_upload, read_multipart

FILE_FIELD = "files"

router = APIRouter()


def get_service(request: Request) -> PredictionService:
    """The service the lifespan built (model loaded once at start-up)."""
    return request.app.state.service


ServiceDep = Annotated[PredictionService, Depends(get_service)]

# The body is parsed by covidxray.web.uploads (limits enforced while streaming), so it is described here by hand.
_MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more chest X-rays: PNG, JPEG or DICOM",
                        },
                        "explain": {"type": "boolean", "description": "same as the query parameter"},
                    },
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed request, or no file in the field 'files'"},
    408: {"model": ErrorResponse, "description": "the body did not arrive within the time limit"},
    413: {
        "model": ErrorResponse,
        "description": "a file or the request is larger than the upload limits, too many files, "
        "or an image has more decoded pixels than the limit",
    },
    415: {"model": ErrorResponse, "description": "a file is not a PNG, JPEG or DICOM image"},
    422: {
        "model": ErrorResponse,
        "description": "an image cannot be decoded (empty, truncated, too small, ...)",
    },
    503: {"model": ErrorResponse, "description": "too many uploads in progress; retry later"},
}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@router.post(
    "/api/v1/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_MULTIPART_BODY,
    summary="Classify one or more chest X-rays",
    tags=["prediction"],
)
async def predict(
    request: Request,
    service: ServiceDep,
    explain: Annotated[bool, Query(description="add a Grad-CAM overlay per image (base64 PNG)")] = False,
    preview: Annotated[bool, Query(description="add a PNG preview rendered from the decoded pixels")] = False,
) -> PredictResponse:
    """Upload images in the multipart field 'files'; the request succeeds for all of them or fails naming the
    first file that is too large or has too many pixels (413), not an image (415) or undecodable (422). A body
    that does not arrive in time gets 408; 503 when too many uploads are in progress. Research use only."""
    settings = service.settings
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_request_bytes + 64 * 1024:  # + multipart framing
        raise UploadError(
            413,
            "too_large",
            f"the request body ({int(declared) / 1024 / 1024:.3g} MB) passes the limit of "
            f"{settings.max_request_mb:.3g} MB per request",
            hint="send the images in several requests",
        )
    # At most max_concurrent_uploads requests hold a body (and then its images) at once; the rest wait.
    with anyio.move_on_after(settings.body_timeout_s) as waiting:
        await service.upload_slots.acquire()
    if waiting.cancelled_caught:
        raise UploadError(
            503,
            "server_busy",
            f"{settings.max_concurrent_uploads} uploads are already in progress; none finished within "
            f"{settings.body_timeout_s:g} s",
            hint="retry in a moment",
        )
    try:
        return await _predict(request, service, explain, preview)
    finally:
        service.upload_slots.release()


async def _predict(
    request: Request, service: PredictionService, explain: bool, preview: bool
) -> PredictResponse:
    settings = service.settings
    with anyio.move_on_after(settings.body_timeout_s) as reading:
        raw, fields = await read_multipart(
            request.headers.get("content-type", ""),
            request.stream(),
            file_field=FILE_FIELD,
            max_file_bytes=settings.max_upload_bytes,
            max_files=settings.max_files,
            max_total_bytes=settings.max_request_bytes,
        )
    if reading.cancelled_caught:
        raise UploadError(
            408,
            "body_timeout",
            f"the request body did not arrive within {settings.body_timeout_s:g} s",
            hint="send smaller files, or fewer per request",
        )
    if not raw:
        raise UploadError(
            400,
            "no_files",
            f"no file in the form field '{FILE_FIELD}'",
            hint=f"attach images as multipart/form-data with the field name '{FILE_FIELD}'",
        )
    uploads = [check_upload(name, data) for name, data in raw]
    explain = explain or _truthy(fields.get("explain"))
    results = await anyio.to_thread.run_sync(service.run, uploads, explain, preview, limiter=service.limiter)
    return PredictResponse(model_version=service.model_version, predictions=results)


@router.get("/api/v1/model", response_model=ModelCard, summary="Model card facts", tags=["model"])
async def model_card(service: ServiceDep) -> ModelCard:
    """Classes, architecture, version, training data, metrics and operating point of the served model."""
    info = {k: v for k, v in service.info.items() if k not in ("limits", "notice")}
    info["version"] = service.model_version
    limits = ServiceLimits(
        max_upload_bytes=service.settings.max_upload_bytes,
        max_files=service.settings.max_files,
        accepted=sorted(ACCEPTED_SUFFIXES),
    )
    return ModelCard(**info, limits=limits)


@router.get("/healthz", response_model=Health, summary="Liveness and the served model", tags=["service"])
async def healthz(service: ServiceDep) -> Health:
    return Health(model_version=service.model_version, backend=service.settings.backend)
