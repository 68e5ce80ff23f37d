"""Argument checks the bulk operations share: target, method, columns, unique keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from sqlperf.bulk.batches import Target
from sqlperf.bulk.rows import Rows
from sqlperf.exceptions import ConfigurationError

__all__ = ["bind_of", "check_unique", "choose_method", "key_columns", "update_columns"]


def bind_of(target: Target) -> Engine | Connection:
    """The engine or connection whose dialect ``target`` writes with."""
    if isinstance(target, Session):
        # A write: a RoutingSession rightly routes it to the primary.
        return target.get_bind()
    if isinstance(target, Engine | Connection):
        return target
    raise ConfigurationError(
        f"bulk operations need an Engine, Connection or Session, not {type(target).__name__}"
    )


def choose_method(
    method: str, dialect: Dialect, methods: Mapping[str, Sequence[str]], operation: str
) -> str:
    """``method``, or the dialect's first (fastest) one for ``"auto"``.

    ``methods`` maps a dialect name to the methods it has, fastest first; staged
    paths need psycopg2 on PostgreSQL (COPY).
    """
    available = [
        m
        for m in methods.get(dialect.name, ())
        if m != "staged" or dialect.name != "postgresql" or dialect.driver == "psycopg2"
    ]
    if method == "auto":
        if not available:
            raise ConfigurationError(f"{operation} does not support {dialect.name}")
        return available[0]
    if method not in available:
        raise ConfigurationError(
            f"{operation} method={method!r} is not available on "
            f"{dialect.name}+{dialect.driver}; use one of {['auto', *available]}"
        )
    return method


def update_columns(
    table: Table,
    columns: Sequence[str],
    key: Sequence[str],
    update: Sequence[str] | str | None,
) -> list[str]:
    """The columns to write: ``"all"`` the rows' columns but ``key``, a list checked, or none."""
    if update is None:
        return []
    if update == "all":
        return [c for c in columns if c not in key]
    if isinstance(update, str):
        raise ConfigurationError(
            f"update must be 'all', a list of column keys or None, not {update!r}"
        )
    chosen = list(update)
    for c in chosen:
        if c not in table.c:
            raise ConfigurationError(f"update names {c!r}, which is not a column of {table.name}")
        if c in key:
            raise ConfigurationError(
                f"update names {c!r}, which is a key column: keys are not updated"
            )
        if c not in columns:
            raise ConfigurationError(f"update names {c!r}, which the rows do not have")
    return chosen


def check_unique(rows: Rows, key: Sequence[str], what: str) -> None:
    """Refuse two rows with the same ``key``: which one wins would depend on the dialect."""
    at = [rows.columns.index(c) for c in key]
    seen: dict[Any, int] = {}
    single = at[0] if len(at) == 1 else None
    for index, row in enumerate(rows.values):
        value = row[single] if single is not None else tuple(row[i] for i in at)
        first = seen.setdefault(value, index)
        if first != index:
            raise ConfigurationError(
                f"rows {first} and {index} have the same {what} "
                f"({', '.join(key)} = {value!r}); give each key once"
            )


def key_columns(table: Table, key: Sequence[str] | None) -> list[str]:
    """``key`` checked against ``table``, or its primary key's column keys."""
    if key is None:
        primary = [c.key for c in table.primary_key.columns]
        if not primary:
            raise ConfigurationError(f"{table.name} has no primary key: pass key=[columns]")
        return primary
    if isinstance(key, str) or not key:
        raise ConfigurationError(f"key must be a list of column keys, not {key!r}")
    for k in key:
        if k not in table.c:
            raise ConfigurationError(f"key names {k!r}, which is not a column of {table.name}")
    return list(key)
