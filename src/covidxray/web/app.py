"""The covidxray web app (FastAPI): an upload page, the JSON API and an offline API reference.

``create_app(predictor_or_model_path, settings)`` returns the app; the model is loaded once, in the lifespan,
and inference runs in worker threads. Everything the page needs is served from ``static/`` (no CDN), so the app
works with no internet; ``/docs`` is a small offline page that renders ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from covidxray.about import NOT_FOR_CLINICAL_USE, __version__
from covidxray.web.api import document_request_body, router
from covidxray.web.audit import AuditLog
from covidxray.web.schemas import ErrorResponse
from covidxray.web.service import PredictionService, PredictorLike
from covidxray.web.settings import WebSettings
from covidxray.web.uploads import UploadError

STATIC_DIR = Path(__file__).parent / "static"

# Only this origin's own scripts, styles and images (plus the data: URLs of previews and overlays).
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Pure ASGI middleware adding the headers above (and ``no-store`` on API and health answers)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        no_store = scope["path"].startswith(("/api/", "/healthz"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + _SECURITY_HEADERS
                if no_store:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _load_predictor(path: Any, backend: str) -> PredictorLike:
    from covidxray.prediction.predictor import load_predictor

    return load_predictor(path, backend=backend)


def open_audit_log(settings: WebSettings) -> AuditLog | None:
    """The audit log the settings name, with their retention bounds (None when ``audit_db`` is None).

    Raises :class:`covidxray.web.audit.AuditError` when the database cannot be opened for writing.
    """
    if not settings.audit_db:
        return None
    return AuditLog(settings.audit_db, settings.retention_days, settings.audit_max_rows)


def create_app(
    predictor_or_model_path: PredictorLike | str | Path | None = None,
    settings: WebSettings | None = None,
    audit: AuditLog | None = None,
) -> FastAPI:
    """The web app serving a loaded predictor, or the bundle at a path (None: the shipped default model).

    ``audit``: an audit log already opened (``covidxray serve`` opens it before printing its banner); by default
    the app opens the one ``settings.audit_db`` names at start-up.
    """
    settings = settings or WebSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predictor = predictor_or_model_path
        if predictor is None or isinstance(predictor, (str, Path)):
            predictor = await anyio.to_thread.run_sync(_load_predictor, predictor, settings.backend)
        audit_log = audit if audit is not None else open_audit_log(settings)
        app.state.service = PredictionService(predictor, settings, audit_log)
        try:
            yield
        finally:
            if audit_log is not None:
                audit_log.close()

    app = FastAPI(
        title="covidxray",
        version=__version__,
        description=f"Chest X-ray COVID-19 / pneumonia / normal classification. {NOT_FOR_CLINICAL_USE}",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's /docs loads swagger-ui from a CDN; ours is served locally
        redoc_url=None,
    )
    app.add_middleware(SecurityHeaders)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus what it cannot see: the hand-parsed upload body under this server's limits."""
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            app.openapi_schema = document_request_body(
                document, settings.max_files, settings.max_upload_bytes
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(UploadError)
    async def upload_error(_request: Request, exc: UploadError) -> JSONResponse:
        body = ErrorResponse(error=exc.error, message=exc.message, file=exc.file, hint=exc.hint)
        headers = {}
        if exc.status_code in (408, 413, 503):  # the body may be partly unread: do not reuse the connection
            headers["connection"] = "close"
        if exc.status_code == 503:
            headers["retry-after"] = "1"
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # 422 is reserved for undecodable images; a malformed query is a plain 400.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse(
            ErrorResponse(error="bad_request", message=problems).model_dump(), status_code=400
        )

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises the exception after this answer, so the server log gets the traceback.
        body = ErrorResponse(
            error="internal_error",
            message=f"unexpected server error ({type(exc).__name__}) while handling this request",
            hint="retry; if it persists, report it with the server log",
        )
        return JSONResponse(body.model_dump(), status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html")

    return app
