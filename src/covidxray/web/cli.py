"""``covidxray serve``: the web app and JSON API on one host and port (uvicorn).

Start-up order, so that nothing is announced that cannot work: settings (exit 2), the listening socket and the
audit database and kept-uploads folder (exit 6: port busy or not permitted, database or folder unusable), the
model (exit 5); only then the "serving on" banner.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from covidxray.bundle import BACKENDS
from covidxray.web.settings import default_audit_db


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


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
    p.add_argument("--port", type=_port, default=8000, help="port, 0 for any free one (default: %(default)s)")
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
        default=default_audit_db(),
        metavar="URL",
        help="SQLAlchemy URL of the audit log, or 'none' (default: $COVIDXRAY_AUDIT_DB, else %(default)s)",
    )
    p.add_argument(
        "--retention-days",
        type=float,
        default=90.0,
        help="delete audit rows and kept uploads older than this, 0 to keep them (default: %(default)s)",
    )
    p.add_argument(
        "--audit-max-rows",
        type=int,
        default=1_000_000,
        help="keep at most this many newest audit rows, 0 for no cap (default: %(default)s)",
    )
    p.add_argument(
        "--keep-uploads",
        type=Path,
        default=None,
        metavar="DIR",
        help="store uploads in DIR as <sha256>.<ext>, DICOMs de-identified (default: uploads are not kept)",
    )
    p.add_argument(
        "--keep-uploads-max-mb",
        type=float,
        default=1024.0,
        help="with --keep-uploads: delete the oldest kept files beyond this total, 0 for no cap "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=50.0,
        help="refuse (413) images with more decoded pixels than this, before decoding (default: %(default)s)",
    )
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=100.0,
        help="largest request body, all files together (default: %(default)s)",
    )
    p.add_argument(
        "--max-concurrent-uploads",
        type=int,
        default=4,
        help="requests holding a body at once; more wait (default: %(default)s)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="time a request body may take to arrive, else 408 (default: %(default)s)",
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


def _bind(host: str, port: int):
    """A listening TCP socket on ``host:port`` (what uvicorn would open), or OSError."""
    import socket

    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def return_freed_memory_to_the_system(threshold: int = 1 << 20) -> bool:
    """Make glibc serve every allocation of ``threshold`` bytes or more with its own mmap, returned at free.

    By default glibc raises this threshold (up to 32 MB) each time a large block is freed, after which upload
    bodies and decoded images come from the heap and stay resident after the request ends. Fixing it keeps the
    server's memory near its idle size between requests. A no-op (False) where glibc is not the C library.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3  # from <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, threshold))
    except (OSError, AttributeError):
        return False


def run_serve(args: argparse.Namespace) -> int:
    from covidxray.errors import EXIT_UNAVAILABLE, EXIT_USAGE, CLIError

    audit_db = None if str(args.audit_db).lower() in ("none", "") else args.audit_db
    try:
        from covidxray.web.settings import WebSettings

        settings = WebSettings(
            max_upload_mb=args.max_upload_mb,
            max_files=args.max_files,
            audit_db=audit_db,
            keep_uploads=args.keep_uploads,
            backend=args.backend,
            torch_threads=args.threads or None,
            max_megapixels=args.max_megapixels,
            max_request_mb=args.max_request_mb,
            max_concurrent_uploads=args.max_concurrent_uploads,
            body_timeout_s=args.body_timeout,
            retention_days=args.retention_days,
            audit_max_rows=args.audit_max_rows,
            keep_uploads_max_mb=args.keep_uploads_max_mb,
            **({"workers": args.workers} if args.workers is not None else {}),
        )
        if audit_db:
            from sqlalchemy.engine import make_url

            make_url(audit_db)  # a malformed URL is a bad argument
    except Exception as exc:  # ValueError from the settings, sqlalchemy's ArgumentError from the URL
        raise CLIError(f"{exc}", EXIT_USAGE) from exc

    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        raise CLIError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
            "(is another server using that port? choose another with --port, or --port 0 for any free one)",
            EXIT_UNAVAILABLE,
        ) from exc
    try:
        return _serve(args, settings, sock)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, settings, sock) -> int:
    """Open the audit log and kept-uploads folder, load the model, announce, serve on the bound ``sock``."""
    from covidxray.about import NOT_FOR_CLINICAL_USE
    from covidxray.errors import EXIT_MODEL, EXIT_UNAVAILABLE, CLIError
    from covidxray.web.app import create_app, open_audit_log
    from covidxray.web.audit import AuditError
    from covidxray.web.kept import KeptUploads

    try:
        audit = open_audit_log(settings)
    except AuditError as exc:
        raise CLIError(f"{exc} (pass another --audit-db URL, or --audit-db none)", EXIT_UNAVAILABLE) from exc
    if settings.keep_uploads is not None:
        try:  # creates the folder and applies the bounds now; the app's service reopens it
            KeptUploads(
                settings.keep_uploads,
                settings.retention_days,
                int(settings.keep_uploads_max_mb * 1024 * 1024),
            )
        except OSError as exc:
            raise CLIError(
                f"--keep-uploads {settings.keep_uploads}: cannot use this folder ({exc.strerror or exc})",
                EXIT_UNAVAILABLE,
            ) from exc

    import uvicorn

    from covidxray.prediction.predictor import load_predictor

    try:  # load here, before the server starts, so a bad bundle is one clear line and exit code 5
        predictor = load_predictor(args.model, backend=args.backend)
    except Exception as exc:
        raise CLIError(f"cannot load model {args.model or '(default)'}: {exc}", EXIT_MODEL) from exc
    if settings.backend == "torch" and settings.torch_threads:
        import torch

        torch.set_num_threads(
            settings.torch_threads
        )  # this process is the server: a process-wide setting is ours
    app = create_app(predictor, settings, audit=audit)
    return_freed_memory_to_the_system()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(NOT_FOR_CLINICAL_USE, flush=True)
    print(f"covidxray: serving on http://{shown}:{port}/ (API reference: /docs)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level))
    server.run(sockets=[sock])
    return 0
