"""Settings of the web app: upload limits, the audit database and where (if anywhere) uploads are kept."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from covidxray.bundle import BACKENDS

DEFAULT_AUDIT_DB = "sqlite:///runs/audit.sqlite"
MB = 1024 * 1024


@dataclass(frozen=True)
class WebSettings:
    """How ``covidxray serve`` behaves; every field has a CLI option of the same name.

    ``audit_db`` is any SQLAlchemy URL (SQLite file by default, e.g. ``postgresql+psycopg://...``), or ``None``
    to keep no audit log. Uploads are held in memory only and never written under their client-supplied name;
    with ``keep_uploads`` set they are stored there as ``<sha256>.<png|jpg|dcm>``.

    ``workers`` requests are predicted at once (default: one per core), each forward pass on ``torch_threads``
    threads (``covidxray serve`` sets it process-wide; None leaves PyTorch's default). One thread per request
    and one request per core beats PyTorch's default of every core per request under concurrent load.
    """

    max_upload_mb: float = 20.0
    max_files: int = 16
    audit_db: str | None = DEFAULT_AUDIT_DB
    keep_uploads: Path | None = None
    backend: str = "torch"
    preview_max_side: int = 512
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    torch_threads: int | None = 1

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
        if self.keep_uploads is not None and not isinstance(self.keep_uploads, Path):
            object.__setattr__(self, "keep_uploads", Path(self.keep_uploads))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)
