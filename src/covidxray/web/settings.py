"""Settings of the web app: upload and decoding limits, the audit database, retention, and kept uploads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from covidxray.bundle import BACKENDS

MB = 1024 * 1024


def default_state_dir() -> Path:
    """Where covidxray keeps server state: ``$XDG_STATE_HOME/covidxray`` (default ``~/.local/state/covidxray``),
    the same whatever the working folder."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "covidxray"


def default_audit_db() -> str:
    """``sqlite:///<state dir>/audit.sqlite``; ``COVIDXRAY_AUDIT_DB`` overrides it."""
    return os.environ.get("COVIDXRAY_AUDIT_DB") or f"sqlite:///{default_state_dir() / 'audit.sqlite'}"


DEFAULT_AUDIT_DB = default_audit_db()


@dataclass(frozen=True)
class WebSettings:
    """How ``covidxray serve`` behaves; every field has a CLI option of the same name.

    ``audit_db`` is any SQLAlchemy URL (SQLite file by default, e.g. ``postgresql+psycopg://...``), or ``None``
    to keep no audit log. Uploads are held in memory only and never written under their client-supplied name;
    with ``keep_uploads`` set they are stored there as ``<sha256>.<png|jpg|dcm>``.

    ``workers`` requests are predicted at once (default: one per core), each forward pass on ``torch_threads``
    threads (``covidxray serve`` sets it process-wide; None leaves PyTorch's default). One thread per request
    and one request per core beats PyTorch's default of every core per request under concurrent load.

    Memory bounds: at most ``max_concurrent_uploads`` requests hold a body at once (others wait for a slot up to
    ``body_timeout_s``, then get 503), a body may take ``body_timeout_s`` seconds to arrive (else 408) and hold
    ``max_request_mb`` in all (else 413); an image above ``max_megapixels`` decoded pixels is refused (413)
    before decoding, and a request's images are decoded one at a time.

    Retention: audit rows older than ``retention_days`` and beyond the newest ``audit_max_rows`` are deleted at
    start-up and as rows are added; kept uploads older than ``retention_days`` or beyond ``keep_uploads_max_mb``
    (oldest first) likewise. 0 turns a bound off. Kept DICOM files are de-identified first.
    """

    max_upload_mb: float = 20.0
    max_files: int = 16
    audit_db: str | None = field(default_factory=default_audit_db)
    keep_uploads: Path | None = None
    backend: str = "torch"
    preview_max_side: int = 512
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    torch_threads: int | None = 1
    max_megapixels: float = 50.0
    max_request_mb: float = 100.0
    max_concurrent_uploads: int = 4
    body_timeout_s: float = 60.0
    retention_days: float = 90.0
    audit_max_rows: int = 1_000_000
    keep_uploads_max_mb: float = 1024.0

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.max_files < 1:
            raise ValueError(f"max_files must be at least 1, got {self.max_files}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1 or None, got {self.torch_threads}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("max_megapixels", "max_request_mb", "body_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_concurrent_uploads < 1:
            raise ValueError(f"max_concurrent_uploads must be at least 1, got {self.max_concurrent_uploads}")
        for name in ("retention_days", "audit_max_rows", "keep_uploads_max_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no limit) or positive, got {getattr(self, name)}")
        if self.keep_uploads is not None and not isinstance(self.keep_uploads, Path):
            object.__setattr__(self, "keep_uploads", Path(self.keep_uploads))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)
