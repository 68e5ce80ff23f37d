"""bulk_delete: delete the rows with the given keys.

On PostgreSQL with psycopg2 (``method="staged"``), each batch of keys is COPYed
into a temporary table and one ``DELETE ... USING`` deletes its rows. Elsewhere
(``method="in"``) one ``DELETE ... WHERE key IN (...)`` goes per chunk of keys
(``(a, b) IN (...)`` for a key of several columns), each chunk within the
database's bound-parameter limit (see :func:`~sqlperf.bulk.driver.param_limit`)
and at most 5,000 keys, so no key list is too long.
``BulkResult.deleted`` is the number of rows deleted; keys matching no row are
``rows - deleted``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import Connection, Table, and_, bindparam, delete, tuple_
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
from sqlperf.bulk.checks import bind_of, choose_method, key_columns
from sqlperf.bulk.driver import note_written, param_limit
from sqlperf.bulk.rows import prepare_rows, resolve_table
from sqlperf.bulk.staging import Stage
from sqlperf.exceptions import ConfigurationError

__all__ = ["DeleteMethod", "bulk_delete"]

DeleteMethod = Literal["auto", "staged", "in"]

_DEFAULT_BATCH = {"staged": 50_000, "in": 10_000}
# Keys per IN list: long lists cost the parser more than the round trips they save.
_IN_CHUNK = 5_000
_METHODS = {"postgresql": ("staged", "in"), "mysql": ("in",), "mariadb": ("in",), "sqlite": ("in",)}


def bulk_delete(
    target: Target,
    table_or_model: Any,
    keys: Iterable[Any],
    *,
    key: Sequence[str] | None = None,
    batch_size: int | None = None,
    method: DeleteMethod = "auto",
    commit_every: int | None = None,
    progress: bool | None = None,
) -> BulkResult:
    """Delete the rows of ``table_or_model`` whose ``key`` is one of ``keys``.

    Args:
        target: an ``Engine``, ``Connection`` or ``Session`` (see :func:`bulk_insert`).
        table_or_model: a ``Table`` or an ORM mapped class.
        keys: plain values for a key of one column (``[1, 2, 3]``); tuples in the
            order of ``key``, dicts or a pandas DataFrame with exactly the key's
            columns for any key.
        key: the key's columns (default: the primary key).
        batch_size: keys per batch (default 50,000 staged, 10,000 otherwise).
        method: ``"auto"``, ``"staged"`` or ``"in"`` (see the module).
        commit_every: commit every this many batches (see :func:`bulk_insert`).
        progress: show a progress bar (see :func:`bulk_upsert`).

    Returns:
        A :class:`BulkResult`; ``rows`` is the keys given, ``deleted`` the rows deleted.

    Raises:
        ConfigurationError: before anything is deleted: keys of the wrong shape or
            with columns that are not the key's.
        sqlalchemy.exc.DBAPIError: in atomic mode, the database's error (a foreign
            key, say), after the rollback of every row of this call.

    Example::

        result = bulk_delete(engine, Session_, expired_ids)
        print(f"{result.deleted} of {result.rows} sessions deleted")
    """
    started = time.perf_counter()
    table = resolve_table(table_or_model)
    columns = key_columns(table, key)
    values = _key_values(table, columns, keys)
    dialect = bind_of(target).dialect
    chosen = choose_method(method, dialect, _METHODS, "bulk_delete")
    batches = split_batches(values, batch_size, _DEFAULT_BATCH[chosen])
    if not batches:
        return no_rows(chosen)
    write = _staged(table, columns, dialect) if chosen == "staged" else _in_lists(table, columns)
    return run_batches(
        target,
        batches,
        write,
        commit_every=commit_every,
        method=chosen,
        started=started,
        progress=progress,
        desc=f"delete {table.name}",
    )


def _key_values(table: Table, columns: list[str], keys: Iterable[Any]) -> list[Any]:
    """The keys as plain values (a one-column key) or tuples in the order of ``columns``."""
    pandas = sys.modules.get("pandas")
    is_frame = pandas is not None and isinstance(keys, pandas.DataFrame)
    items: Any = keys if is_frame or isinstance(keys, list) else list(keys)
    if not is_frame and (not items or not isinstance(items[0], Mapping | tuple | list)):
        if len(columns) > 1:
            raise ConfigurationError(
                f"the key has {len(columns)} columns ({', '.join(columns)}): "
                "give each key as a tuple or a dict"
            )
        return list(items)
    if not is_frame and isinstance(items[0], tuple | list):
        for index, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != len(columns):
                raise ConfigurationError(
                    f"key {index} is {item!r}; give each key as a tuple of "
                    f"{len(columns)} values ({', '.join(columns)})"
                )
        return [item[0] for item in items] if len(columns) == 1 else [tuple(i) for i in items]
    prepared = prepare_rows(table, items, required=columns, required_for="the key")
    extra = [c for c in prepared.columns if c not in columns]
    if extra:
        raise ConfigurationError(
            f"the keys have columns that are not the key's ({', '.join(extra)}); "
            f"give only {', '.join(columns)}, or pass key=[...]"
        )
    at = [prepared.columns.index(c) for c in columns]
    if len(at) == 1:
        return [row[at[0]] for row in prepared.values]
    return [tuple(row[i] for i in at) for row in prepared.values]


def _in_lists(table: Table, columns: list[str]) -> WriteBatch:
    cols = [table.c[c] for c in columns]
    target = cols[0] if len(cols) == 1 else tuple_(*cols)
    stmt = delete(table).where(target.in_(bindparam("keys", expanding=True)))

    def write(conn: Connection, batch: Sequence[Any]) -> Counts:
        chunk = max(1, min(_IN_CHUNK, param_limit(conn) // len(cols)))
        deleted = 0
        for first in range(0, len(batch), chunk):
            deleted += conn.execute(stmt, {"keys": batch[first : first + chunk]}).rowcount
        note_written(conn, table)
        return Counts(len(batch), deleted=deleted)

    return write


def _staged(table: Table, columns: list[str], dialect: Dialect) -> WriteBatch:
    stage = Stage(table, columns, dialect)
    # A DELETE naming another table renders as DELETE ... USING on PostgreSQL.
    stmt = delete(table).where(and_(*(table.c[c] == stage.table.c[c] for c in columns)))

    def write(conn: Connection, batch: Sequence[Any]) -> Counts:
        rows = batch if len(columns) > 1 else [(key,) for key in batch]
        with stage.holding(conn, rows, columns):
            deleted = conn.execute(stmt).rowcount
        note_written(conn, table)
        return Counts(len(batch), deleted=deleted)

    return write
