"""bulk_upsert: insert rows, or update the ones whose conflict key is already there.

The paths (``method=``):

* ``"staged"`` (PostgreSQL with psycopg2, the default there): each batch is
  COPYed into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT``
  writes it;
* ``"values"`` (PostgreSQL, any driver): SQLAlchemy's ``insert().on_conflict_do_update()``
  with ``RETURNING``, which SQLAlchemy sends as multi-row ``VALUES`` pages
  (insertmanyvalues). Without ``RETURNING`` SQLAlchemy 2.1 sends such a statement
  row by row, one round trip each: sqlperf never does;
* ``"executemany"`` (SQLite, MySQL/MariaDB, the default there): the statement
  compiled once, ``ON CONFLICT`` on SQLite, ``ON DUPLICATE KEY UPDATE`` on MySQL,
  which PyMySQL sends as multi-row ``VALUES`` statements.

Counts (:class:`~sqlperf.bulk.BulkResult`): PostgreSQL tells inserted from updated
rows (``xmax = 0`` of the returned rows); MySQL does through its info string
(``Records``/``Duplicates``) and affected-rows count; SQLite reports only how many
rows it left unchanged (inserted and updated rows are counted together).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from sqlalchemy import Boolean, Connection, Table, func, literal_column, or_, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement

from sqlperf.bulk.batches import (
    BulkResult,
    Counts,
    Target,
    WriteBatch,
    no_rows,
    run_batches,
    split_batches,
)
from sqlperf.bulk.checks import bind_of, check_unique, choose_method, update_columns
from sqlperf.bulk.compare import changed
from sqlperf.bulk.driver import executemany_writer, mysql_info, note_written
from sqlperf.bulk.rows import prepare_rows, resolve_table
from sqlperf.bulk.staging import Stage
from sqlperf.exceptions import ConfigurationError

__all__ = ["UpsertMethod", "bulk_upsert"]

UpsertMethod = Literal["auto", "staged", "values", "executemany"]

_DEFAULT_BATCH = {"staged": 50_000, "values": 5_000, "executemany": 10_000}
# Rows per executemany on MySQL: one info string per statement PyMySQL sends; this
# many stay within its 1 MB statements for rows of ordinary size.
_MYSQL_CHUNK = 1_000
_METHODS = {
    "postgresql": ("staged", "values"),
    "sqlite": ("executemany",),
    "mysql": ("executemany",),
    "mariadb": ("executemany",),
}


def bulk_upsert(
    target: Target,
    table_or_model: Any,
    rows: Iterable[Any],
    *,
    conflict: Sequence[str],
    update: Sequence[str] | Literal["all"] | None = "all",
    only_changed: bool = False,
    batch_size: int | None = None,
    method: UpsertMethod = "auto",
    commit_every: int | None = None,
    progress: bool | None = None,
) -> BulkResult:
    """Insert ``rows``; a row whose ``conflict`` key exists updates that row instead.

    Args:
        target: an ``Engine``, ``Connection`` or ``Session`` (see :func:`bulk_insert`).
        table_or_model: a ``Table`` or an ORM mapped class.
        rows: dicts, tuples or a pandas DataFrame (see :func:`bulk_insert`); every row
            has the ``conflict`` columns.
        conflict: the columns of the primary key or unique constraint that decides
            whether a row exists (PostgreSQL and SQLite need it to match one;
            MySQL uses whichever unique key a row collides with).
        update: the columns to overwrite on conflict: ``"all"`` (every column of the
            rows but ``conflict``), a list, or ``None`` to leave existing rows alone.
        only_changed: do not rewrite rows whose values are already equal (``IS
            DISTINCT FROM``: no dead tuple or trigger for them on PostgreSQL). MySQL
            never rewrites equal rows, with or without it.
        batch_size: rows per batch (default 50,000 staged, 10,000 otherwise).
        method: ``"auto"``, ``"staged"``, ``"values"`` or ``"executemany"`` (see the module).
        commit_every: commit every this many batches (see :func:`bulk_insert`).
        progress: show a progress bar: ``True``, ``False``, or ``None`` for long runs
            in a terminal.

    Returns:
        A :class:`BulkResult` with ``inserted``, ``updated`` and ``unchanged`` where the
        database tells them (see the module).

    Raises:
        ConfigurationError: before anything is written: bad rows or options, rows
            without a conflict column, or (when updating) two rows with the same
            conflict key.
        sqlalchemy.exc.DBAPIError: in atomic mode, the database's error, after the
            rollback of every row of this call.

    Example::

        result = bulk_upsert(engine, Product, feed, conflict=["sku"], only_changed=True)
        print(result.inserted, result.updated, result.unchanged)
    """
    started = time.perf_counter()
    table = resolve_table(table_or_model)
    if isinstance(conflict, str) or not conflict:
        raise ConfigurationError(f"conflict must be a list of column keys, not {conflict!r}")
    prepared = prepare_rows(table, rows, required=conflict, required_for="the conflict target")
    dialect = bind_of(target).dialect
    chosen = choose_method(method, dialect, _METHODS, "bulk_upsert")
    columns = prepared.columns
    updated = update_columns(table, columns, conflict, update)
    if updated:
        check_unique(prepared, conflict, "conflict key")
    values = prepared.values
    batches = split_batches(values, batch_size, _DEFAULT_BATCH[chosen])
    if not batches:
        return no_rows(chosen)
    write = _writer(chosen, table, columns, conflict, updated, only_changed, dialect)
    return run_batches(
        target,
        batches,
        write,
        commit_every=commit_every,
        method=chosen,
        started=started,
        progress=progress,
        desc=f"upsert {table.name}",
    )


def _writer(  # noqa: PLR0917 - the one place the paths are told apart
    method: str,
    table: Table,
    columns: Sequence[str],
    conflict: Sequence[str],
    update: Sequence[str],
    only_changed: bool,
    dialect: Dialect,
) -> WriteBatch:
    if method == "staged":
        return _staged(table, columns, conflict, update, only_changed, dialect)
    if method == "values":
        return _values(table, columns, conflict, update, only_changed)
    if dialect.name == "sqlite":
        return _sqlite(table, columns, conflict, update, only_changed, dialect)
    return _mysql(table, columns, conflict, update, dialect)


def _pg_statement(
    table: Table,
    source: Any,
    conflict: Sequence[str],
    update: Sequence[str],
    only_changed: bool,
) -> postgresql.Insert:
    stmt = source
    index = [table.c[c] for c in conflict]
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=index)  # type: ignore[no-any-return]
    excluded = stmt.excluded
    where = _changed_clause(table, excluded, update, "postgresql") if only_changed else None
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=index,
        set_={table.c[c]: excluded[c] for c in update},
        where=where,
    )


def _changed_clause(
    table: Table, new: Any, update: Sequence[str], dialect: str
) -> ColumnElement[bool]:
    return or_(*(changed(table.c[c], new[c], dialect) for c in update))


#: True for a row the statement inserted, false for one it updated (PostgreSQL).
_INSERTED = literal_column("xmax = 0", Boolean).label("inserted")


def _staged(  # noqa: PLR0917 - private, one call site
    table: Table,
    columns: Sequence[str],
    conflict: Sequence[str],
    update: Sequence[str],
    only_changed: bool,
    dialect: Dialect,
) -> WriteBatch:
    stage = Stage(table, columns, dialect)
    source = postgresql.insert(table).from_select(
        [table.c[c] for c in columns], select(*stage.table.c)
    )
    upsert = _pg_statement(table, source, conflict, update, only_changed)
    written = upsert.returning(_INSERTED).cte("written")
    counted = select(func.count().filter(written.c.inserted), func.count()).select_from(written)

    def write(conn: Connection, batch: Sequence[Any]) -> Counts:
        with stage.holding(conn, batch, conflict):
            inserted, affected = conn.execute(counted).one()
        note_written(conn, table)  # the cache cannot see through the WITH
        return _pg_counts(len(batch), inserted, affected)

    return write


def _pg_counts(rows: int, inserted: int, affected: int) -> Counts:
    return Counts(rows, inserted=inserted, updated=affected - inserted, unchanged=rows - affected)


def _values(
    table: Table,
    columns: Sequence[str],
    conflict: Sequence[str],
    update: Sequence[str],
    only_changed: bool,
) -> WriteBatch:
    # RETURNING is what keeps SQLAlchemy batching: see the module.
    stmt = _pg_statement(table, postgresql.insert(table), conflict, update, only_changed)
    returning = stmt.returning(_INSERTED)

    def write(conn: Connection, batch: Sequence[Any]) -> Counts:
        params = [dict(zip(columns, row, strict=True)) for row in batch]
        flags = conn.execute(returning, params).scalars().all()
        return _pg_counts(len(batch), sum(flags), len(flags))

    return write


def _sqlite(  # noqa: PLR0917 - private, one call site
    table: Table,
    columns: Sequence[str],
    conflict: Sequence[str],
    update: Sequence[str],
    only_changed: bool,
    dialect: Dialect,
) -> WriteBatch:
    statement = _sqlite_statement(table, conflict, update, only_changed)
    send = executemany_writer(statement, table, columns, dialect)

    def write(conn: Connection, batch: Sequence[Any]) -> Counts:
        affected = send(conn, batch).rowcount
        if not update:
            return Counts(len(batch), affected, 0, len(batch) - affected)
        return Counts(len(batch), None, None, len(batch) - affected)

    return write


def _mysql(
    table: Table,
    columns: Sequence[str],
    conflict: Sequence[str],
    update: Sequence[str],
    dialect: Dialect,
) -> WriteBatch:
    send = executemany_writer(
        _mysql_statement(table, conflict, update, dialect), table, columns, dialect
    )

    def write(conn: Connection, batch: Sequence[Any]) -> Counts:
        counts = Counts(0, 0, 0, 0)
        for first in range(0, len(batch), _MYSQL_CHUNK):
            chunk = batch[first : first + _MYSQL_CHUNK]
            affected = send(conn, chunk).rowcount
            counts += _mysql_counts(len(chunk), affected, mysql_info(conn), bool(update))
        return counts

    return write


def _sqlite_statement(
    table: Table, conflict: Sequence[str], update: Sequence[str], only_changed: bool
) -> sqlite.Insert:
    stmt = sqlite.insert(table)
    index = [table.c[c] for c in conflict]
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=index)
    excluded = stmt.excluded
    where = _changed_clause(table, excluded, update, "sqlite") if only_changed else None
    return stmt.on_conflict_do_update(
        index_elements=index, set_={table.c[c]: excluded[c] for c in update}, where=where
    )


def _mysql_statement(
    table: Table, conflict: Sequence[str], update: Sequence[str], dialect: Dialect
) -> mysql.Insert:
    stmt = mysql.insert(table)
    quote = dialect.identifier_preparer.format_column
    # VALUES(col), not MySQL 8's row alias: PyMySQL only batches statements whose
    # ON DUPLICATE KEY clause follows the VALUES list directly.
    # Nothing to update: a no-op assignment, never INSERT IGNORE (which would also
    # turn every other error into a warning).
    names = update or conflict[:1]
    return stmt.on_duplicate_key_update(
        {table.c[c]: literal_column(f"VALUES({quote(table.c[c])})") for c in names}
        if update
        else {table.c[c]: table.c[c] for c in names}
    )


def _mysql_counts(rows: int, affected: int, info: dict[str, int], updating: bool) -> Counts:
    """Counts from MySQL's affected rows (1 inserted, 2 updated, 1 unchanged: SQLAlchemy
    sets CLIENT_FOUND_ROWS) and its info string's ``Duplicates`` (existing rows)."""
    updated = affected - rows if updating else 0
    if info.get("Records") != rows:  # no info string (one row), or PyMySQL split the chunk
        return Counts(rows, None, updated, None)
    duplicates = info["Duplicates"]
    return Counts(rows, rows - duplicates, updated, duplicates - updated)
