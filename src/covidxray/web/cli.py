"""``covidxray serve``: the web app and JSON API on one host and port (uvicorn)."""

from __future__ import annotations

import argparse
from pathlib import Path

from covidxray.bundle import BACKENDS
from covidxray.web.settings import DEFAULT_AUDIT_DB


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the upload page and the JSON API",
        description="Serve the upload page (/), the JSON API (/api/v1/...) and its reference (/docs). "
        "The model is loaded once at start-up.",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="RUN",
        help="model bundle or run folder (default: the shipped default model)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="inference backend (Grad-CAM needs torch; default: %(default)s)",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest accepted file (default: %(default)s)"
    )
    p.add_argument("--max-files", type=int, default=16, help="most files per request (default: %(default)s)")
    p.add_argument(
        "--audit-db",
        default=DEFAULT_AUDIT_DB,
        metavar="URL",
        help="SQLAlchemy URL of the audit log, or 'none' (default: %(default)s)",
    )
    p.add_argument(
        "--keep-uploads",
        type=Path,
        default=None,
        metavar="DIR",
        help="store uploads in DIR as <sha256>.<ext> (default: uploads are not kept)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="requests predicted at once (default: one per CPU core)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="PyTorch threads per request, 0 for PyTorch's default (default: %(default)s; "
        "one thread per request is fastest under concurrent load)",
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from covidxray.about import NOT_FOR_CLINICAL_USE
    from covidxray.errors import EXIT_MODEL, EXIT_USAGE, CLIError

    try:
        from covidxray.web.settings import WebSettings

        settings = WebSettings(
            max_upload_mb=args.max_upload_mb,
            max_files=args.max_files,
            audit_db=None if str(args.audit_db).lower() in ("none", "") else args.audit_db,
            keep_uploads=args.keep_uploads,
            backend=args.backend,
            torch_threads=args.threads or None,
            **({"workers": args.workers} if args.workers is not None else {}),
        )
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from exc

    import uvicorn

    from covidxray.prediction.predictor import load_predictor
    from covidxray.web.app import create_app

    try:  # load here, before the server starts, so a bad bundle is one clear line and exit code 5
        predictor = load_predictor(args.model, backend=args.backend)
    except Exception as exc:
        raise CLIError(f"cannot load model {args.model or '(default)'}: {exc}", EXIT_MODEL) from exc
    if settings.backend == "torch" and settings.torch_threads:
        import torch

        torch.set_num_threads(
            settings.torch_threads
        )  # this process is the server: a process-wide setting is ours
    print(NOT_FOR_CLINICAL_USE, flush=True)
    print(f"covidxray: serving on http://{args.host}:{args.port}/ (API reference: /docs)", flush=True)
    uvicorn.run(create_app(predictor, settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
