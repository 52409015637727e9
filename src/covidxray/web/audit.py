"""The audit log of predictions: one row per image (time, image sha256, model version, result), via SQLAlchemy.

SQLite in ``runs/audit.sqlite`` by default; any SQLAlchemy URL (e.g. ``postgresql+psycopg://user@host/db``) by
option. No file names or pixels are stored: the sha256 identifies an image without revealing it.
"""

from __future__ import annotations

import datetime as dt
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
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

metadata = MetaData()

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
    """Append-only log of predictions. Thread-safe (each call uses its own pooled connection)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = create_audit_engine(url)
        metadata.create_all(self.engine)

    def record(self, records: Iterable[AuditRecord]) -> None:
        rows = [
            {
                "time": r.time,
                "image_sha256": r.image_sha256,
                "model_version": r.model_version,
                "label": r.label,
                "probabilities": r.probabilities,
                "warnings": list(r.warnings),
            }
            for r in records
        ]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(predictions.insert(), rows)

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
        return f"AuditLog({make_url(self.url).render_as_string(hide_password=True)!r})"
