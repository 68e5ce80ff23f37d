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

from sqlperf.bulk.progress import ProgressBar, progress_bar
from sqlperf.exceptions import ConfigurationError

__all__ = ["BulkResult", "Counts", "Target", "no_rows", "run_batches", "split_batches"]

Target = Engine | Connection | Session

# SQLSTATE of a deadlock and a serialization failure (PostgreSQL), MySQL's error numbers.
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})
_RETRY_MYSQL = frozenset({1213, 1205})


@dataclass(frozen=True, slots=True)
class Counts:
    """What a batch did: the rows it sent, and what the database says became of them.

    A count is ``None`` when the operation does not do that (``deleted`` of an
    insert) or the database cannot tell; a sum with ``None`` is ``None``.
    """

    rows: int
    inserted: int | None = None
    updated: int | None = None
    unchanged: int | None = None
    deleted: int | None = None

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.rows + other.rows,
            _plus(self.inserted, other.inserted),
            _plus(self.updated, other.updated),
            _plus(self.unchanged, other.unchanged),
            _plus(self.deleted, other.deleted),
        )


#: Nothing yet: the start of a sum.
_ZERO = Counts(0, 0, 0, 0, 0)

#: Writes one batch on a connection.
WriteBatch = Callable[[Connection, Sequence[Any]], Counts]


def _plus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


@dataclass(frozen=True, kw_only=True)
class BulkResult:
    """What a bulk operation did.

    Attributes:
        rows: input rows written (in atomic mode: by the committed transaction, or
            inside the caller's transaction, which the caller still commits); for
            ``bulk_delete``, the keys sent.
        batches: batches written, the failed one included.
        elapsed: seconds, validation included.
        committed_batches: batches committed (atomic mode: all of them, or 0 on error).
        failed_batch: the 0-based index of the batch that failed, else ``None``.
        error: that batch's database error, else ``None``.
        method: how the rows went, e.g. ``"copy"``, ``"executemany"``, ``"staged"``.
        returned: rows of ``returning=``, in input order.
        inserted: rows the database inserted.
        updated: rows it changed.
        unchanged: rows it left as they were (an upsert's conflicting rows with
            nothing to update or, with ``only_changed=True``, equal values).
        deleted: rows it deleted.

    Each count is ``None`` when the operation does not do that or the database
    cannot tell (see each operation for what it reports where).
    """

    rows: int
    batches: int
    elapsed: float
    committed_batches: int
    failed_batch: int | None = None
    error: BaseException | None = None
    method: str = ""
    returned: list[Any] = field(default_factory=list)
    inserted: int | None = None
    updated: int | None = None
    unchanged: int | None = None
    deleted: int | None = None

    @property
    def ok(self) -> bool:
        """True when no batch failed."""
        return self.error is None


def split_batches(
    values: Sequence[Any], batch_size: int | None, default: int
) -> list[Sequence[Any]]:
    """``values`` cut into batches of ``batch_size`` (``default`` when None)."""
    size = batch_size if batch_size is not None else default
    if size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, not {size!r}")
    return [values[i : i + size] for i in range(0, len(values), size)]


def no_rows(method: str) -> BulkResult:
    """The result of an operation given no rows: nothing sent, nothing to commit."""
    return BulkResult(rows=0, batches=0, elapsed=0.0, committed_batches=0, method=method)


def run_batches(
    target: Target,
    batches: Sequence[Sequence[Any]],
    write: WriteBatch,
    *,
    commit_every: int | None,
    retries: int = 3,
    method: str,
    started: float,
    progress: bool | None = None,
    desc: str = "",
) -> BulkResult:
    """Write ``batches`` with ``write`` on ``target``, atomically or ``commit_every`` batches.

    ``progress``/``desc``: the progress bar (see :mod:`sqlperf.bulk.progress`).
    """
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
    elif not isinstance(target, Engine | Connection | Session):
        raise ConfigurationError(
            f"bulk operations need an Engine, Connection or Session, not {type(target).__name__}"
        )
    bar = progress_bar(progress, total=sum(map(len, batches)), desc=desc)
    try:
        if commit_every is not None:
            return _per_batch(
                target,  # type: ignore[arg-type]  # Session refused above
                batches,
                write,
                commit_every,
                retries,
                method,
                started,
                bar,
            )
        counts = _atomic(target, batches, _counted(write, bar))
    finally:
        if bar is not None:
            bar.close()
    return _result(counts, len(batches), len(batches), method, started)


def _atomic(target: Target, batches: Sequence[Sequence[Any]], write: WriteBatch) -> Counts:
    if isinstance(target, Session):
        _begin_sqlite(target.connection())
        with target.begin_nested():
            return _sum(target.connection(), batches, write)
    if isinstance(target, Connection) and target.in_transaction():
        _begin_sqlite(target)
        with target.begin_nested():
            return _sum(target, batches, write)
    if isinstance(target, Connection):
        with target.begin():
            return _sum(target, batches, write)
    with target.begin() as conn:
        return _sum(conn, batches, write)


def _sum(conn: Connection, batches: Sequence[Sequence[Any]], write: WriteBatch) -> Counts:
    counts = _ZERO
    for batch in batches:
        counts += write(conn, batch)
    return counts


def _counted(write: WriteBatch, bar: ProgressBar | None) -> WriteBatch:
    if bar is None:
        return write

    def counted(conn: Connection, batch: Sequence[Any]) -> Counts:
        counts = write(conn, batch)
        bar.update(len(batch))
        return counts

    return counted


def _result(  # noqa: PLR0917 - private, one shape for both modes
    counts: Counts,
    batches: int,
    committed: int,
    method: str,
    started: float,
    failed: int | None = None,
    error: BaseException | None = None,
) -> BulkResult:
    return BulkResult(
        rows=counts.rows,
        batches=batches,
        elapsed=time.perf_counter() - started,
        committed_batches=committed,
        failed_batch=failed,
        error=error,
        method=method,
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        deleted=counts.deleted,
    )


def _per_batch(  # noqa: PLR0917 - one call site, arguments passed straight on
    target: Engine | Connection,
    batches: Sequence[Sequence[Any]],
    write: WriteBatch,
    every: int,
    retries: int,
    method: str,
    started: float,
    bar: ProgressBar | None,
) -> BulkResult:
    conn = target.connect() if isinstance(target, Engine) else target
    counts = _ZERO
    committed = 0
    try:
        for first in range(0, len(batches), every):
            group = batches[first : first + every]
            for attempt in range(retries + 1):
                written: list[Counts] = []
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
                    return _result(counts, failed + 1, committed, method, started, failed, exc)
            for batch_counts in written:
                counts += batch_counts
            committed += len(group)
            if bar is not None:  # after the commit: a retried group counts once
                bar.update(sum(map(len, group)))
    finally:
        if isinstance(target, Engine):
            conn.close()
    return _result(counts, len(batches), committed, method, started)


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
