"""Typed request and response bodies of the JSON API (they also make the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from covidxray.about import NOT_FOR_CLINICAL_USE


class DecisionInfo(BaseModel):
    """Which operating point decided the label, and the probability beside its threshold."""

    point: str | None = Field(
        description="name of the deciding operating point (screening, balanced, site); null: arg-max"
    )
    class_: str | None = Field(None, alias="class", description="the class the threshold is on")
    threshold: float | None = None
    probability: float | None = Field(
        None, description="the probability of that class, compared with threshold"
    )
    met: bool | None = Field(None, description="probability >= threshold")
    rule: str | None = Field(None, description="how the threshold was chosen, e.g. sensitivity>=0.95")
    chosen_on: str | None = Field(None, description="on which images the threshold was chosen")
    explanation: str = Field(description="the decision in words")

    model_config = ConfigDict(populate_by_name=True)


class LungFields(BaseModel):
    """What the lung segmenter found (SCR convention: lung fields as seen, heart excluded)."""

    area_fraction: float = Field(description="lung pixels / image pixels")
    components: int = Field(description="connected lung regions (2 expected)")
    balance: float = Field(description="smaller / larger of the left and right halves' lung areas")
    quality: str = Field(description="ok, no_lungs, small, large, one_component or unbalanced")


class ImagePrediction(BaseModel):
    """The result for one uploaded image."""

    file: str = Field(description="the client's file name, echoed for display only")
    sha256: str = Field(description="SHA-256 of the uploaded bytes (the audit log's key)")
    label: str = Field(description="predicted class")
    probabilities: dict[str, float] = Field(description="class -> probability; they sum to 1")
    decision: DecisionInfo | None = Field(None, description="why this label: the deciding operating point")
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
    lungs: LungFields | None = Field(None, description="lung fields found by the shipped segmenter")
    gradcam_lung_share: float | None = Field(
        None, description="share of the Grad-CAM heatmap inside the lung fields (with explain=true)"
    )


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
    operating_point: dict[str, Any] | None = Field(None, description="the deciding operating point")
    operating_points: dict[str, Any] = Field(default_factory=dict, description="all stored operating points")
    decision: str | None = Field(None, description="name of the deciding operating point")
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
        description="no_files, bad_request, client_disconnected, too_large, too_many_files, image_too_large, "
        "body_timeout, unsupported_media_type, undecodable_image, explain_unavailable, server_busy or "
        "internal_error"
    )
    message: str
    file: str | None = None
    hint: str = ""
