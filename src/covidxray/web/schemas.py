"""Typed request and response bodies of the JSON API (they also make the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from covidxray.about import NOT_FOR_CLINICAL_USE


class ImagePrediction(BaseModel):
    """The result for one uploaded image."""

    file: str = Field(description="the client's file name, echoed for display only")
    sha256: str = Field(description="SHA-256 of the uploaded bytes (the audit log's key)")
    label: str = Field(description="predicted class")
    probabilities: dict[str, float] = Field(description="class -> probability; they sum to 1")
    warnings: list[str] = Field(
        default_factory=list, description="input checks that failed (e.g. not an X-ray)"
    )
    width: int
    height: int
    format: str = Field(description="decoded format: png, jpeg or dicom")
    preview_png: str | None = Field(
        None, description="base64 PNG rendered by the server from the decoded pixels (with preview=true)"
    )
    gradcam_png: str | None = Field(None, description="base64 PNG Grad-CAM overlay (with explain=true)")


class PredictResponse(BaseModel):
    model_version: str
    notice: str = NOT_FOR_CLINICAL_USE
    predictions: list[ImagePrediction]


class ServiceLimits(BaseModel):
    max_upload_bytes: int
    max_files: int
    accepted: list[str] = Field(description="accepted file extensions; content is sniffed too")


class ModelCard(BaseModel):
    """Model card facts from the bundle (``Predictor.info()``) plus this service's limits."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    classes: list[str]
    architecture: str
    version: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    operating_point: dict[str, Any] | None = None
    decision_rule: str = Field(
        "the most probable class", description="how the label follows from the probabilities"
    )
    intended_use: str = ""
    backend: str = "torch"
    notice: str = NOT_FOR_CLINICAL_USE
    limits: ServiceLimits


class Health(BaseModel):
    status: str = "ok"
    model_version: str
    backend: str


class ErrorResponse(BaseModel):
    """Every refusal: a stable code, a message naming the file, and what to do."""

    error: str = Field(
        description="no_files, bad_request, too_large, too_many_files, unsupported_media_type, "
        "undecodable_image, explain_unavailable or internal_error"
    )
    message: str
    file: str | None = None
    hint: str = ""
