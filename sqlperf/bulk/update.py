"""bulk_update: new values for existing rows, found by a key.

The paths (``method=``):

* ``"staged"`` (PostgreSQL with psycopg2, MySQL/MariaDB; the default there): each
  batch goes into a temporary table (COPY on PostgreSQL, multi-row ``VALUES`` on
  MySQL), then one ``UPDATE ... FROM`` (PostgreSQL) or multi-table ``UPDATE``
  (MySQL) writes it;
* ``"executemany"`` (SQLite, the default there; PostgreSQL with any driver): one
  ``UPDATE ... WHERE key = ?`` compiled once and sent with the DB-API
  ``executemany``.

Counts (:class:`~sqlperf.bulk.BulkResult`): ``updated`` everywhere (rows changed);
``unchanged`` (rows found but equal) on PostgreSQL staged with ``only_changed``,
and always on MySQL (its info string: ``Rows matched``/``Changed``); 0 where every
row found is rewritten. Rows whose key matches nothing are neither: ``rows -
updated - unchanged``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect

from sqlperf.bulk.batches import (
    BulkResult,
    Counts,
    Target,
    WriteBatch,
    no_rows,
    run_batches,
    split_batches,
)
from sqlperf.bulk.checks import bind_of, check_unique, choose_method, key_columns, update_columns
from sqlperf.bulk.compare import changed
from sqlperf.bulk.driver import executemany_writer, mysql_info, note_written
from sqlperf.bulk.rows import prepare_rows, resolve_table
from sqlperf.bulk.staging import Stage
from sqlperf.exceptions import ConfigurationError

__all__ = ["UpdateMethod", "bulk_update"]

UpdateMethod = Literal["auto", "staged", "executemany"]

_DEFAULT_BATCH = {"staged": 50_000, "executemany": 10_000}
_METHODS = {
    "postgresql": ("staged", "executemany"),
    "mysql": ("staged",),
    "mariadb": ("staged",),
    "sqlite": ("executemany",),
}
# Bind names of the key in the executemany UPDATE (a column's own name is its SET value).
_KEY_PREFIX = "sqlperf_key_"


def bulk_update(
    target: Target,
    table_or_model: Any,
    rows: Iterable[Any],
    *,
    key: Sequence[str] | None = None,
    only_changed: bool = False,
    batch_size: int | None = None,
    method: UpdateMethod = "auto",
    commit_every: int | None = None,
    progress: bool | None = None,
) -> BulkResult:
    """Set the columns of ``rows`` on the existing rows with the same ``key``.

    Args:
        target: an ``Engine``, ``Connection`` or ``Session`` (see :func:`bulk_insert`).
        table_or_model: a ``Table`` or an ORM mapped class.
        rows: dicts, tuples or a pandas DataFrame (see :func:`bulk_insert`): the key
            columns and the columns to set. A row whose key matches no row changes
            nothing.
        key: the columns that find a row (default: the primary key).
        only_changed: do not rewrite rows whose values are already equal (``IS
            DISTINCT FROM``). MySQL never rewrites equal rows, with or without it.
        batch_size: rows per batch (default 50,000 staged, 10,000 otherwise).
        method: ``"auto"``, ``"staged"`` or ``"executemany"`` (see the module).
        commit_every: commit every this many batches (see :func:`bulk_insert`).
        progress: show a progress bar (see :func:`bulk_upsert`).

    Returns:
        A :class:`BulkResult` with ``updated`` and, where the database tells,
        ``unchanged`` (see the module).

    Raises:
        ConfigurationError: before anything is written: bad rows or options, rows
            without a key column or with nothing but the key, two rows with the same key.
        sqlalchemy.exc.DBAPIError: in atomic mode, the database's error, after the
            rollback of every row of this call.

    Example::

        bulk_update(engine, Order, [{"id": 7, "status": "shipped"}, ...], only_changed=True)
    """
    started = time.perf_counter()
    table = resolve_table(table_or_model)
    keys = key_columns(table, key)
    prepared = prepare_rows(table, rows, required=keys, required_for="the key")
    dialect = bind_of(target).dialect
    chosen = choose_method(method, dialect, _METHODS, "bulk_update")
    columns = prepared.columns
    values = update_columns(table, columns, keys, "all")
    if prepared.values and not values:
        raise ConfigurationError(
            f"the rows have only the key ({', '.join(keys)}): give them the columns to set"
        )
    check_unique(prepared, keys, "key")
    batches = split_batches(prepared.values, batch_size, _DEFAULT_BATCH[chosen])
    if not batches:
        return no_rows(chosen)
    if chosen == "staged":
        write = _staged(table, columns, keys, values, only_changed, dialect)
    else:
        write = _executemany(table, columns, keys, values, only_changed, dialect)
    return run_batches(
        target,
        batches,
        write,
        commit_every=commit_every,
        method=chosen,
        started=started,
        progress=progress,
        desc=f"update {table.name}",
    )


def _staged(  # noqa: PLR0917 - private, one call site
    table: Table,
    columns: Sequence[str],
    key: Sequence[str],
    values: Sequence[str],
    only_changed: bool,
    dialect: Dialect,
) -> WriteBatch:
    postgres = dialect.name == "postgresql"
    stage = Stage(table, columns, dialect)
    stmt = _staged_statement(table, stage.table, key, values, only_changed, postgres)

    def write(conn: Connection, batch: Sequence[Any]) -> Counts:
        with stage.holding(conn, batch, key):
            if postgres:
                updated, matched = conn.execute(stmt).one()
            else:
                conn.execute(stmt)
                info = mysql_info(conn)  # "Rows matched: 3  Changed: 2  Warnings: 0"
                matched, updated = info.get("Rows matched"), info.get("Changed")
        counts = Counts(len(batch), updated=updated, unchanged=None)
        if matched is not None and updated is not None:
            counts = Counts(len(batch), updated=updated, unchanged=matched - updated)
        note_written(conn, table)  # PostgreSQL: the cache cannot see through the WITH
        return counts

    return write


def _staged_statement(  # noqa: PLR0917 - private, called once
    table: Table,
    stage: Table,
    key: Sequence[str],
    values: Sequence[str],
    only_changed: bool,
    postgres: bool,
) -> Any:
    """PostgreSQL: the UPDATE in a WITH, counted with the rows it found; MySQL: the
    multi-table UPDATE (MySQL counts in its info string, and never rewrites equal rows)."""
    match = and_(*(table.c[k] == stage.c[k] for k in key))
    where = match
    if only_changed and postgres:
        where = and_(match, or_(*(changed(table.c[c], stage.c[c], "postgresql") for c in values)))
    stmt = update(table).values({table.c[c]: stage.c[c] for c in values}).where(where)
    if not postgres:
        return stmt
    written = stmt.returning(literal_column("1")).cte("written")
    updated = select(func.count()).select_from(written).scalar_subquery()
    if not only_changed:  # every row found is written
        return select(updated, updated)
    found = select(func.count()).select_from(stage.join(table, match)).scalar_subquery()
    return select(updated, found)


def _executemany(  # noqa: PLR0917 - private, one call site
    table: Table,
    columns: Sequence[str],
    key: Sequence[str],
    values: Sequence[str],
    only_changed: bool,
    dialect: Dialect,
) -> WriteBatch:
    rename = {_KEY_PREFIX + k: k for k in key}
    stmt = _keyed_update(table, key, values, only_changed, dialect.name)
    send = executemany_writer(stmt, table, columns, dialect, rename, insert_columns=False)
    sane_rowcount = dialect.supports_sane_multi_rowcount

    def write(conn: Connection, batch: Sequence[Any]) -> Counts:
        result = send(conn, batch)
        updated = result.rowcount if sane_rowcount else None
        # Found but equal rows are not counted apart from missing keys here.
        return Counts(len(batch), updated=updated, unchanged=None if only_changed else 0)

    return write


def _keyed_update(
    table: Table, key: Sequence[str], values: Sequence[str], only_changed: bool, dialect: str
) -> Any:
    """``UPDATE table SET value = :value WHERE key = :sqlperf_key_key [AND changed]``."""
    new: dict[str, Any] = {c: bindparam(c) for c in values}
    where = and_(*(table.c[k] == bindparam(_KEY_PREFIX + k) for k in key))
    if only_changed:
        where = and_(where, or_(*(changed(table.c[c], new[c], dialect) for c in values)))
    return update(table).where(where).values({table.c[c]: new[c] for c in values})
