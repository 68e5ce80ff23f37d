"""Transactions and batches for the bulk helpers: atomic, or a commit per batch.

Atomic (the default): every batch in one transaction. With an ``Engine`` (or a
``Connection`` outside a transaction) sqlperf begins and commits it; inside the
caller's transaction (a ``Connection`` in one, or a ``Session``) the batches run
in a SAVEPOINT, so a failure takes back exactly the helper's rows and the
caller's transaction goes on. Either way the database error is raised as it is.

``commit_every=n``: a transaction per ``n`` batches, each retried (with backoff,
``retries`` times) when it hits a deadlock or a serialization failure. A failing
batch stops the run; nothing after it is written, and :class:`BulkResult` says
which batch failed, with what error, and how many were committed, so the caller
can resume from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from sqlperf.exceptions import ConfigurationError

__all__ = ["BulkResult", "Target", "run_batches"]

Target = Engine | Connection | Session
#: Writes one batch on a connection; returns the rows it wrote.
WriteBatch = Callable[[Connection, Sequence[Any]], int]

# SQLSTATE of a deadlock and a serialization failure (PostgreSQL), MySQL's error numbers.
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})
_RETRY_MYSQL = frozenset({1213, 1205})


@dataclass(frozen=True, kw_only=True)
class BulkResult:
    """What a bulk operation did.

    Attributes:
        rows: rows written (in atomic mode: by the committed transaction, or inside
            the caller's transaction, which the caller still commits).
        batches: batches written, the failed one included.
        elapsed: seconds, validation included.
        committed_batches: batches committed (atomic mode: all of them, or 0 on error).
        failed_batch: the 0-based index of the batch that failed, else ``None``.
        error: that batch's database error, else ``None``.
        method: how the rows went: ``"copy"``, ``"executemany"`` or ``"values"``.
        returned: rows of ``returning=``, in input order.
    """

    rows: int
    batches: int
    elapsed: float
    committed_batches: int
    failed_batch: int | None = None
    error: BaseException | None = None
    method: str = ""
    returned: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no batch failed."""
        return self.error is None


def run_batches(
    target: Target,
    batches: Sequence[Sequence[Any]],
    write: WriteBatch,
    *,
    commit_every: int | None,
    retries: int = 3,
    method: str,
    started: float,
) -> BulkResult:
    """Write ``batches`` with ``write`` on ``target``, atomically or ``commit_every`` batches."""
    if commit_every is not None:
        if commit_every < 1:
            raise ConfigurationError(f"commit_every must be at least 1, not {commit_every!r}")
        if isinstance(target, Session) or (
            isinstance(target, Connection) and target.in_transaction()
        ):
            raise ConfigurationError(
                "commit_every needs an Engine or a Connection outside a transaction: "
                "sqlperf commits each batch itself"
            )
        return _per_batch(target, batches, write, commit_every, retries, method, started)
    rows = 0
    if isinstance(target, Session):
        _begin_sqlite(target.connection())
        with target.begin_nested():
            conn = target.connection()
            rows = sum(write(conn, batch) for batch in batches)
    elif isinstance(target, Connection) and target.in_transaction():
        _begin_sqlite(target)
        with target.begin_nested():
            rows = sum(write(target, batch) for batch in batches)
    elif isinstance(target, Connection):
        with target.begin():
            rows = sum(write(target, batch) for batch in batches)
    elif isinstance(target, Engine):
        with target.begin() as conn:
            rows = sum(write(conn, batch) for batch in batches)
    else:
        raise ConfigurationError(
            f"bulk operations need an Engine, Connection or Session, not {type(target).__name__}"
        )
    return BulkResult(
        rows=rows,
        batches=len(batches),
        elapsed=time.perf_counter() - started,
        committed_batches=len(batches),
        method=method,
    )


def _per_batch(  # noqa: PLR0917 - one call site, arguments passed straight on
    target: Engine | Connection,
    batches: Sequence[Sequence[Any]],
    write: WriteBatch,
    every: int,
    retries: int,
    method: str,
    started: float,
) -> BulkResult:
    conn = target.connect() if isinstance(target, Engine) else target
    rows = committed = 0
    try:
        for first in range(0, len(batches), every):
            group = batches[first : first + every]
            for attempt in range(retries + 1):
                written: list[int] = []
                try:
                    with conn.begin():
                        for batch in group:
                            written.append(write(conn, batch))
                    break
                except DBAPIError as exc:
                    if attempt < retries and _retryable(exc):
                        time.sleep(0.05 * 2**attempt)
                        continue
                    failed = first + len(written)
                    return BulkResult(
                        rows=rows,
                        batches=failed + 1,
                        elapsed=time.perf_counter() - started,
                        committed_batches=committed,
                        failed_batch=failed,
                        error=exc,
                        method=method,
                    )
            rows += sum(written)
            committed += len(group)
    finally:
        if isinstance(target, Engine):
            conn.close()
    return BulkResult(
        rows=rows,
        batches=len(batches),
        elapsed=time.perf_counter() - started,
        committed_batches=committed,
        method=method,
    )


def _begin_sqlite(conn: Connection) -> None:
    """Open the SQLite transaction a SAVEPOINT must nest in.

    Python's sqlite3 module (before 3.12's ``autocommit``) defers BEGIN until the
    first write; a SAVEPOINT issued first becomes the outermost transaction, and
    its RELEASE would commit the rows behind the caller's back.
    """
    if conn.dialect.name != "sqlite":
        return
    dbapi_connection: Any = conn.connection.dbapi_connection
    if not dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN")


def _retryable(exc: DBAPIError) -> bool:
    orig: Any = exc.orig
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    if code in _RETRY_SQLSTATES:
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _RETRY_MYSQL
