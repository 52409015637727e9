"""The JSON API: ``POST /api/v1/predict``, ``GET /api/v1/model`` and ``GET /healthz``."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request

from covidxray.web.schemas import ErrorResponse, Health, ModelCard, PredictResponse, ServiceLimits
from covidxray.web.service import PredictionService
from covidxray.web.uploads import ACCEPTED_SUFFIXES, REPEATED, UploadError, check_upload, read_multipart

FILE_FIELD = "files"

router = APIRouter()


def get_service(request: Request) -> PredictionService:
    """The service the lifespan built (model loaded once at start-up)."""
    return request.app.state.service


ServiceDep = Annotated[PredictionService, Depends(get_service)]

# Media types of the parts of 'files' (content is sniffed; the part's Content-Type header is not trusted).
ACCEPTED_MEDIA_TYPES = ("image/png", "image/jpeg", "application/dicom")

_ERROR = {"model": ErrorResponse}
_SERVER_ERROR: dict[int | str, dict[str, Any]] = {
    500: {**_ERROR, "description": "unexpected server error (the server log has the details)"}
}
_PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        **_ERROR,
        "description": "malformed request: no file in the field 'files', a file in another field, a bad "
        "query value, or explain=true on the onnx backend",
    },
    408: {**_ERROR, "description": "the body did not arrive within the server's body time limit"},
    413: {
        **_ERROR,
        "description": "a file or the whole request is larger than the upload limits, more files than "
        "maxItems, or an image has more decoded pixels than the limit",
    },
    415: {
        **_ERROR,
        "description": "the body is not multipart/form-data, or a file is not PNG, JPEG or DICOM",
    },
    422: {**_ERROR, "description": "an image cannot be decoded (empty, truncated, too small, ...)"},
    **_SERVER_ERROR,
    503: {**_ERROR, "description": "too many uploads in progress for longer than the body time limit; retry"},
}


def predict_request_body(max_files: int, max_upload_bytes: int) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of ``POST /api/v1/predict`` under this server's limits.

    The body is parsed by :func:`covidxray.web.uploads.read_multipart` (limits enforced while streaming), not by
    FastAPI, so it is described here by hand; ``create_app`` puts it into the published schema.
    """
    return {
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
                            "minItems": 1,
                            "maxItems": max_files,
                            "description": f"one to {max_files} chest X-rays (PNG, JPEG or DICOM), each at "
                            f"most {max_upload_bytes} bytes; the type is read from the content",
                        },
                        "explain": {
                            "type": "boolean",
                            "description": "true or false; same as the query parameter",
                        },
                    },
                },
                "encoding": {FILE_FIELD: {"contentType": ", ".join(ACCEPTED_MEDIA_TYPES)}},
            }
        },
    }


def document_request_body(openapi: dict[str, Any], max_files: int, max_upload_bytes: int) -> dict[str, Any]:
    """Put :func:`predict_request_body` into a generated OpenAPI document (in place; returned for chaining)."""
    operation = openapi["paths"]["/api/v1/predict"]["post"]
    operation["requestBody"] = predict_request_body(max_files, max_upload_bytes)
    return openapi


def form_bool(fields: dict[str, str], name: str) -> bool:
    """A boolean form field: ``true`` or ``false`` (any case) as the schema says, absent is false, else a 400."""
    value = fields.get(name)
    if value is None:
        return False
    if REPEATED in value:
        raise UploadError(
            400,
            "bad_request",
            f"form field '{name}' was sent {value.count(REPEATED) + 1} times; it takes one value",
            hint=f"send {name} once",
        )
    spelled = value.strip().lower()
    if spelled not in ("true", "false"):
        raise UploadError(
            400,
            "bad_request",
            f"form field '{name}' must be true or false, got {value[:40]!r}",
            hint=f"send {name}=true, {name}=false, or leave the field out",
        )
    return spelled == "true"


@router.post(
    "/api/v1/predict",
    response_model=PredictResponse,
    responses=_PREDICT_ERRORS,
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
    explain = form_bool(fields, "explain") or explain
    uploads = [check_upload(name, data) for name, data in raw]
    results = await anyio.to_thread.run_sync(service.run, uploads, explain, preview, limiter=service.limiter)
    return PredictResponse(model_version=service.model_version, predictions=results)


@router.get(
    "/api/v1/model",
    response_model=ModelCard,
    responses=_SERVER_ERROR,
    summary="Model card facts",
    tags=["model"],
)
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


@router.get(
    "/healthz",
    response_model=Health,
    responses=_SERVER_ERROR,
    summary="Liveness and the served model",
    tags=["service"],
)
async def healthz(service: ServiceDep) -> Health:
    return Health(model_version=service.model_version, backend=service.settings.backend)
