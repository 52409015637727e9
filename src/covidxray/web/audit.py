"""The audit log of predictions: one row per image (time, image sha256, model version, result), via SQLAlchemy.

SQLite in ``~/.local/state/covidxray/audit.sqlite`` by default (see :func:`covidxray.web.settings.default_audit_db`);
any SQLAlchemy URL (e.g. ``postgresql+psycopg://user@host/db``) by option. No file names or pixels are stored: the
sha256 identifies an image without revealing it. Retention: rows older than ``retention_days`` and beyond the
newest ``max_rows`` are deleted when the log opens and every :data:`PRUNE_EVERY` recorded rows.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

metadata = MetaData()
PRUNE_EVERY = 500  # recorded rows between two retention passes


class AuditError(RuntimeError):
    """An audit database that cannot be opened or written (``covidxray serve`` exit code 6)."""


predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False, index=True),
    Column("image_sha256", String(64), nullable=False, index=True),
    Column("model_version", String(200), nullable=False),
    Column("label", String(64), nullable=False),
    Column("probabilities", JSON, nullable=False),
    Column("warnings", JSON, nullable=False),
)


@dataclass(frozen=True)
class AuditRecord:
    """One audited prediction."""

    image_sha256: str
    model_version: str
    label: str
    probabilities: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    time: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    id: int | None = None


def _row(r: AuditRecord) -> dict[str, Any]:
    return {
        "time": r.time,
        "image_sha256": r.image_sha256,
        "model_version": r.model_version,
        "label": r.label,
        "probabilities": r.probabilities,
        "warnings": list(r.warnings),
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (e.g. an analyst's sqlite3 shell) work while the server writes; NORMAL sync is
    # crash-safe in WAL mode and avoids an fsync per prediction.
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def create_audit_engine(url: str) -> Engine:
    """An engine for ``url``; creates the SQLite file's folder, and shares one connection for in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    if database in ("", ":memory:"):
        return create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class AuditLog:
    """Append-only log of predictions with a retention bound. Thread-safe (each call uses its own pooled
    connection).

    ``retention_days`` and ``max_rows`` bound the log (None or 0: no bound). Opening checks that the database can
    be written (a transaction inserting one row, rolled back) and raises :class:`AuditError` if not.
    """

    def __init__(self, url: str, retention_days: float | None = None, max_rows: int | None = None):
        self.url = url
        self.retention_days = retention_days or None
        self.max_rows = max_rows or None
        self._since_prune = 0
        self._lock = threading.Lock()
        try:
            self.engine = create_audit_engine(url)
            metadata.create_all(self.engine)
            with (
                self.engine.connect() as conn
            ):  # can we write? (a read-only file or role fails here, not later)
                trans = conn.begin()
                conn.execute(predictions.insert(), [_row(AuditRecord("0" * 64, "check", "check", {}))])
                trans.rollback()
        except (SQLAlchemyError, OSError, ValueError, ImportError) as exc:
            raise AuditError(f"audit database {self!r} cannot be opened for writing: {exc}") from exc
        self.prune()

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete rows older than ``retention_days`` and beyond the newest ``max_rows``; the number deleted."""
        deleted = 0
        with self.engine.begin() as conn:
            if self.retention_days:
                cutoff = (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=self.retention_days)
                deleted += conn.execute(delete(predictions).where(predictions.c.time < cutoff)).rowcount or 0
            if self.max_rows:
                newest = conn.execute(select(func.max(predictions.c.id))).scalar()
                if newest is not None and newest > self.max_rows:
                    deleted += (
                        conn.execute(
                            delete(predictions).where(predictions.c.id <= newest - self.max_rows)
                        ).rowcount
                        or 0
                    )
        return deleted

    def record(self, records: Iterable[AuditRecord]) -> None:
        rows = [_row(r) for r in records]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(predictions.insert(), rows)
            with self._lock:
                self._since_prune += len(rows)
                due = self._since_prune >= PRUNE_EVERY
                if due:
                    self._since_prune = 0
            if due:
                self.prune()

    def recent(self, limit: int = 100) -> list[AuditRecord]:
        """The latest ``limit`` records, newest first."""
        query = select(predictions).order_by(predictions.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [
                AuditRecord(
                    id=row.id,
                    time=row.time,
                    image_sha256=row.image_sha256,
                    model_version=row.model_version,
                    label=row.label,
                    probabilities=dict(row.probabilities),
                    warnings=list(row.warnings),
                )
                for row in conn.execute(query)
            ]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(predictions)).scalar_one())

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        try:
            shown = make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # an unparseable URL: show it without anything that looks like a password
            shown = self.url.split("@")[-1]
        return f"AuditLog({shown!r})"
