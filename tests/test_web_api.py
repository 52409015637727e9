"""The JSON API and pages with a real model (the tiny seed_cnn2 bundle through the real Predictor): every
endpoint and every error status, the audit log, kept uploads and the offline pages."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import dicom_bytes, xray_like
from covidxray import NOT_FOR_CLINICAL_USE
from covidxray.web.app import STATIC_DIR, create_app
from covidxray.web.audit import AuditLog
from covidxray.web.settings import WebSettings

CLASSES = ["covid", "normal", "pneumonia"]
METRICS = {"test": {"accuracy": 0.5}}
DATA = {"sources": ["synthetic"], "n_train": 12}
OPERATING_POINT = {"class": "covid", "threshold": 0.2, "target_sensitivity": 0.95}


@pytest.fixture(scope="session")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with model-card facts (metrics, data, an operating point) written into its config."""
    from covidxray.bundle import update_bundle

    out = tmp_path_factory.mktemp("web") / "bundle"
    shutil.copytree(tiny_bundle, out)
    update_bundle(out, metrics=METRICS, data=DATA, operating_point=OPERATING_POINT)
    return out


@pytest.fixture(scope="session")
def predictor(bundle):
    from covidxray.prediction.predictor import load_predictor

    return load_predictor(bundle)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _client(predictor, tmp_path, **settings) -> TestClient:
    settings.setdefault("audit_db", f"sqlite:///{tmp_path}/audit.sqlite")
    return TestClient(create_app(predictor, WebSettings(**settings)))


def _audit(tmp_path) -> AuditLog:
    return AuditLog(f"sqlite:///{tmp_path}/audit.sqlite")


def _decode_b64_png(data: str) -> Image.Image:
    raw = base64.b64decode(data)
    assert raw.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(raw))


# -- endpoints -------------------------------------------------------------------------------------------------
def test_healthz_and_model_card(predictor, tmp_path):
    with _client(predictor, tmp_path, max_upload_mb=3, max_files=5) as client:
        health = client.get("/healthz")
        card = client.get("/api/v1/model")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.headers["cache-control"] == "no-store"
    version = health.json()["model_version"]
    assert version == predictor.backend.version and version.startswith("seed_cnn2@")
    body = card.json()
    assert card.status_code == 200
    assert body["classes"] == CLASSES and body["architecture"] == "seed_cnn2" and body["version"] == version
    assert body["metrics"] == METRICS and body["data"] == DATA
    assert body["operating_point"] == OPERATING_POINT and "p(covid) >= 0.2" in body["decision_rule"]
    assert body["decision"] == "screening" and body["operating_points"] == {"screening": OPERATING_POINT}
    assert "Not for screening" in body["intended_use"] and body["backend"] == "torch"
    assert body["notice"] == NOT_FOR_CLINICAL_USE
    assert body["limits"] == {
        "max_upload_bytes": 3 * 1024 * 1024,
        "max_files": 5,
        "accepted": [".dcm", ".dicom", ".jpe", ".jpeg", ".jpg", ".png"],
    }


def test_predict_png_jpeg_dicom_with_audit_rows(predictor, tmp_path):
    pixels = xray_like(size=128, seed=1)
    uploads = [
        ("chest.png", _png(pixels)),
        ("other.jpg", _jpeg(xray_like(seed=2))),
        ("scan.dcm", dicom_bytes(pixels)),
    ]
    with _client(predictor, tmp_path) as client:
        r = client.post(
            "/api/v1/predict", files=[("files", (n, d, "application/octet-stream")) for n, d in uploads]
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["notice"] == NOT_FOR_CLINICAL_USE and body["model_version"] == predictor.backend.version
    preds = body["predictions"]
    assert [p["file"] for p in preds] == [n for n, _ in uploads]
    assert [p["format"] for p in preds] == ["png", "jpeg", "dicom"]
    for p, (_, data) in zip(preds, uploads, strict=True):
        assert p["label"] in CLASSES and set(p["probabilities"]) == set(CLASSES)
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        assert p["preview_png"] is None and p["gradcam_png"] is None
        d = p["decision"]  # which operating point decided, p(covid) beside its threshold
        assert d["point"] == "screening" and d["threshold"] == 0.2 and d["class"] == "covid"
        assert d["probability"] == pytest.approx(p["probabilities"]["covid"]) and d["met"] == (
            d["probability"] >= 0.2
        )
        assert f"p(covid) = {d['probability']:.3f}" in d["explanation"]
        assert p["sha256"] == hashlib.sha256(data).hexdigest()
    # The API gives what the library gives, and the same pixels give the same result as PNG or DICOM.
    direct = predictor.predict(_png(pixels))
    assert preds[0]["label"] == direct.label
    assert preds[0]["probabilities"] == pytest.approx(direct.probabilities, abs=1e-6)
    assert preds[2]["probabilities"] == pytest.approx(preds[0]["probabilities"], abs=0.02)

    rows = _audit(tmp_path).recent(10)[::-1]
    assert [r.image_sha256 for r in rows] == [p["sha256"] for p in preds]
    assert all(r.model_version == body["model_version"] for r in rows)
    assert [r.label for r in rows] == [p["label"] for p in preds]
    assert rows[0].probabilities == pytest.approx(preds[0]["probabilities"])
    assert rows[0].time is not None


def test_predict_explain_and_preview(predictor, tmp_path):
    pixels = xray_like(size=200, seed=3)
    with _client(predictor, tmp_path) as client:
        r = client.post(
            "/api/v1/predict?explain=true&preview=true",
            files=[
                ("files", ("x.png", _png(pixels), "image/png")),
                ("files", ("x.dcm", dicom_bytes(pixels), "application/dicom")),
            ],
        )
        by_form = client.post(
            "/api/v1/predict",
            data={"explain": "true"},
            files={"files": ("x.png", _png(pixels), "image/png")},
        )
    assert r.status_code == 200, r.text
    for pred in r.json()["predictions"]:
        overlay = _decode_b64_png(pred["gradcam_png"])
        assert overlay.mode == "RGB" and overlay.width == 512
        preview = _decode_b64_png(pred["preview_png"])  # DICOM too: the browser shows the server's PNG
        assert preview.size == (pred["width"], pred["height"]) == (200, 200)
    assert by_form.status_code == 200 and by_form.json()["predictions"][0]["gradcam_png"]
    assert by_form.json()["predictions"][0]["preview_png"] is None


def test_413_file_too_large_names_the_file(predictor, tmp_path):
    big = _png(
        np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8)
    )  # ~160 kB, incompressible
    with _client(predictor, tmp_path, max_upload_mb=0.1) as client:
        r = client.post("/api/v1/predict", files={"files": ("big scan.png", big, "image/png")})
    assert r.status_code == 413
    assert r.json()["error"] == "too_large" and r.json()["file"] == "big scan.png"
    assert "big scan.png" in r.json()["message"] and "0.1 MB" in r.json()["message"]
    assert _audit(tmp_path).count() == 0


def test_413_too_many_files(predictor, tmp_path):
    png = _png(xray_like())
    with _client(predictor, tmp_path, max_files=2) as client:
        r = client.post(
            "/api/v1/predict", files=[("files", (f"{i}.png", png, "image/png")) for i in range(3)]
        )
    assert r.status_code == 413 and r.json()["error"] == "too_many_files" and r.json()["file"] == "2.png"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("notes.png", b"just some text, not an image"),
        ("photo.gif", b"GIF89a" + b"\0" * 100),
        ("page.jpg", b"<!doctype html><html></html>"),
    ],
)
def test_415_wrong_type_names_the_file(predictor, tmp_path, name, data):
    with _client(predictor, tmp_path) as client:
        r = client.post("/api/v1/predict", files={"files": (name, data, "image/png")})
    assert r.status_code == 415
    assert (
        r.json()["error"] == "unsupported_media_type"
        and r.json()["file"] == name
        and name in r.json()["message"]
    )


def test_415_body_not_multipart(predictor, tmp_path):
    with _client(predictor, tmp_path) as client:
        r = client.post("/api/v1/predict", content=_png(xray_like()), headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["message"]


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("truncated.png", _png(xray_like())[:300], "truncated"),
        ("empty.png", b"", "empty"),
        ("thumb.png", _png(xray_like(size=32)), "smaller than"),
        ("broken.dcm", b"\0" * 128 + b"DICM" + b"\1" * 50, "DICOM"),
    ],
)
def test_422_undecodable_image_names_the_file(predictor, tmp_path, name, data, words):
    good = _png(xray_like())
    with _client(predictor, tmp_path) as client:
        r = client.post(
            "/api/v1/predict",
            files=[("files", ("good.png", good, "image/png")), ("files", (name, data, "image/png"))],
        )
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "undecodable_image" and body["file"] == name
    assert body["message"].startswith(f"{name}: ") and words in body["message"] and body["hint"]
    assert _audit(tmp_path).count() == 0  # all or nothing: the good file was not predicted either


def test_400_no_files_or_bad_parameter(predictor, tmp_path):
    only_a_field = b'--b\r\nContent-Disposition: form-data; name="explain"\r\n\r\ntrue\r\n--b--\r\n'
    with _client(predictor, tmp_path) as client:
        no_files = client.post(
            "/api/v1/predict",
            content=only_a_field,
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        bad_query = client.post(
            "/api/v1/predict?explain=perhaps", files={"files": ("x.png", _png(xray_like()), "image/png")}
        )
    assert no_files.status_code == 400 and no_files.json()["error"] == "no_files"
    assert bad_query.status_code == 400
    assert bad_query.json()["error"] == "bad_request" and "explain" in bad_query.json()["message"]


def test_explain_form_field_is_a_boolean(predictor, tmp_path):
    """The schema says boolean: true/false are read, anything else is refused (it was silently false)."""
    png = ("x.png", _png(xray_like()), "image/png")
    with _client(predictor, tmp_path) as client:
        bad = client.post("/api/v1/predict", files={"files": png}, data={"explain": "0"})
        yes = client.post("/api/v1/predict", files={"files": png}, data={"explain": "TRUE"})
        no = client.post("/api/v1/predict", files={"files": png}, data={"explain": "false"})
        # sent twice, explain is an array in the schema's terms: refused, not read as its first or last value
        twice = client.post("/api/v1/predict", files={"files": png}, data={"explain": ["true", "true"]})
    assert twice.status_code == 400 and "sent 2 times" in twice.json()["message"]
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
    assert "'explain'" in bad.json()["message"] and "'0'" in bad.json()["message"]
    assert yes.json()["predictions"][0]["gradcam_png"] and no.json()["predictions"][0]["gradcam_png"] is None


def test_openapi_states_the_server_limits_and_every_error(predictor, tmp_path):
    """What the server enforces is in the published schema (the contract fuzz relies on it)."""
    with _client(predictor, tmp_path, max_files=5, max_upload_mb=1) as client:
        doc = client.get("/openapi.json").json()
    with _client(predictor, tmp_path, max_files=7) as client:  # one app's limits do not leak into another's
        other = client.get("/openapi.json").json()
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    predict = doc["paths"]["/api/v1/predict"]["post"]
    form = predict["requestBody"]["content"]["multipart/form-data"]
    files = form["schema"]["properties"]["files"]
    assert predict["requestBody"]["required"] and form["schema"]["required"] == ["files"]
    assert (files["minItems"], files["maxItems"]) == (1, 5) and str(1024 * 1024) in files["description"]
    assert form["encoding"]["files"]["contentType"] == "image/png, image/jpeg, application/dicom"
    for status in ("400", "413", "415", "422", "500"):
        assert predict["responses"][status]["content"]["application/json"]["schema"] == error_ref, status
    for path in ("/api/v1/model", "/healthz"):
        assert (
            doc["paths"][path]["get"]["responses"]["500"]["content"]["application/json"]["schema"]
            == error_ref
        )
    other_files = other["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert other_files["schema"]["properties"]["files"]["maxItems"] == 7 and files["maxItems"] == 5


def test_500_is_an_error_response(predictor, tmp_path):
    """An unexpected failure (here: --keep-uploads names a file, not a folder) answers the documented model."""
    not_a_folder = tmp_path / "kept"
    not_a_folder.write_text("")
    app = create_app(predictor, WebSettings(audit_db=None, keep_uploads=not_a_folder))
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/api/v1/predict", files={"files": ("x.png", _png(xray_like()), "image/png")})
    assert r.status_code == 500
    assert r.json()["error"] == "internal_error" and "FileExistsError" in r.json()["message"]


def test_uploads_kept_only_when_configured_and_only_under_sha256(predictor, tmp_path):
    png = _png(xray_like(seed=3))
    with _client(predictor, tmp_path) as client:
        client.post("/api/v1/predict", files={"files": ("patient-name.png", png, "image/png")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.sqlite"]  # + WAL files are gone at close
    kept = tmp_path / "kept"
    with _client(predictor, tmp_path, keep_uploads=kept) as client:
        r = client.post("/api/v1/predict", files={"files": ("patient-name.png", png, "image/png")})
    sha = r.json()["predictions"][0]["sha256"]
    assert [p.name for p in kept.iterdir()] == [f"{sha}.png"]
    assert (kept / f"{sha}.png").read_bytes() == png


def test_pages_work_offline_and_send_security_headers(predictor, tmp_path):
    with _client(predictor, tmp_path) as client:
        page = client.get("/")
        docs = client.get("/docs")
        spec = client.get("/openapi.json").json()
        js = client.get("/static/app.js")
        api = client.get("/healthz")
    assert page.status_code == docs.status_code == js.status_code == 200
    assert "/static/docs.js" in docs.text and client.get("/redoc").status_code == 404
    html = page.text
    assert '<input type="file" id="files"' in html and '<label for="files"' in html
    assert 'id="dropzone"' in html and 'tabindex="0"' in html
    assert "Not for clinical use" in html and "not be used for clinical diagnosis" in html
    assert 'name="viewport"' in html
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert api.headers["cache-control"] == "no-store"
    body = spec["paths"]["/api/v1/predict"]["post"]
    assert "files" in body["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"200", "400", "413", "415", "422"} <= set(body["responses"])
    assert {"/api/v1/model", "/healthz"} <= set(spec["paths"])
    # No CDN, no external fonts: nothing in static/ loads from another origin.
    for f in STATIC_DIR.iterdir():
        text = f.read_text()
        assert not re.search(
            r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", text
        ), f


def test_onnx_backend_serves_predictions_and_refuses_explain(bundle, predictor, tmp_path):
    from covidxray.prediction.export import export_onnx
    from covidxray.prediction.predictor import load_predictor

    export_onnx(bundle, bundle.parent / "onnx" / "model.onnx", check=False)
    onnx = load_predictor(bundle.parent / "onnx" / "model.onnx", backend="onnx")
    png = _png(xray_like(seed=4))
    with _client(onnx, tmp_path, backend="onnx") as client:
        ok = client.post("/api/v1/predict", files={"files": ("x.png", png, "image/png")})
        refused = client.post("/api/v1/predict?explain=true", files={"files": ("x.png", png, "image/png")})
        health = client.get("/healthz").json()
    assert ok.status_code == 200 and health["backend"] == "onnx"
    assert health["model_version"] == predictor.backend.version  # a bundle and its export share a version
    expected = predictor.predict(png).probabilities
    assert ok.json()["predictions"][0]["probabilities"] == pytest.approx(expected, abs=1e-4)
    assert refused.status_code == 400 and refused.json()["error"] == "explain_unavailable"
    assert "torch" in refused.json()["message"]


def test_serve_refuses_a_missing_model_with_exit_code_5(tmp_path, capsys):
    from covidxray.cli import main
    from covidxray.errors import EXIT_MODEL

    assert main(["serve", "--model", str(tmp_path / "nope"), "--audit-db", "none"]) == EXIT_MODEL
    assert "cannot load model" in capsys.readouterr().err
