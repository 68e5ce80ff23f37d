"""Server-side prepared statements for the query cache's misses on psycopg2.

psycopg2 sends every statement as text with its values written in, so PostgreSQL
parses and plans it again at each execution. For a small join, planning costs more
than running: the example shop's order detail (four tables) plans in 0.14 to 0.2 ms
and runs in 0.06 to 0.09 ms once warm, and a loop of them took 300 µs a query as
text against 123 µs as ``EXECUTE`` of a prepared statement. A cache miss that the
cache reads in autocommit (a session's first read; see ``docs/cache.md``) runs here
as ``EXECUTE`` of a statement prepared once per connection, under these rules:

* **only in autocommit**: an ``EXECUTE`` that fails aborts no transaction, so the
  statement then runs as text, as it would have anyway, and its outcome (rows or
  the database's error) is what the caller gets;
* **the same types as the text**: each parameter is declared with the type
  PostgreSQL gives the literal psycopg2 writes for its value (``5`` is
  ``integer``, ``1.5`` is ``numeric``, a naive ``datetime`` is ``timestamp``), and
  ``unknown`` for strings and ``None``, whose type the context decides, as it does
  for the quoted literal. ``EXECUTE`` therefore converts no value that the text
  would have compared as it was (declaring ``integer`` for ``1.5`` would round it
  to 2). A value of any other Python type (lists, JSON, enums) is not prepared;
* **repeated statements only**: a statement is prepared once this cache has run
  it ``threshold`` times, so statements run once (an ``IN`` list written inline)
  cost no extra round trip; and at most ``max_per_connection`` per connection;
* **not again after a failure**: a statement whose ``PREPARE`` fails, or whose
  ``EXECUTE`` fails where the text then succeeds, is not prepared again by this
  cache. That covers a schema change (``cached plan must not change result
  type``), ``DISCARD ALL``, and a pooler in transaction mode (PgBouncer), which may
  send the ``EXECUTE`` to another server connection than the ``PREPARE``.

PostgreSQL may run a prepared statement with a generic plan after its fifth
execution, when that plan's estimated cost is close to the custom plans'
(``plan_cache_mode``); the results are the same, the plan may be slower on skewed
data. ``QueryCache(prepare_misses=False)`` turns all of this off.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlperf.cache.keys import Memo

__all__ = ["PreparedStatements", "declared_type"]

#: Where a pooled connection's prepared statements are listed: its pool record's
#: ``info``, which SQLAlchemy empties whenever it replaces the DB-API connection.
_REGISTRY = "sqlperf_prepared"
#: psycopg2's placeholders: ``%(name)s``, ``%%`` (a literal ``%``), anything else
#: (a lone ``%``, which the statement cannot have come through SQLAlchemy with).
_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s|%%|%")

_INT4 = 2**31
_INT8 = 2**63


def declared_type(value: Any) -> str | None:  # noqa: PLR0911 - one case per type
    """The type to declare for a parameter of ``value``: the type of the literal
    psycopg2 writes for it, ``"unknown"`` for ``str`` and ``None``, or ``None`` for
    a value that is not prepared (not one of these exact types)."""
    kind = type(value)
    if value is None or kind is str:
        return "unknown"
    if kind is bool:
        return "boolean"
    if kind is int:
        if -_INT4 <= value < _INT4:
            return "integer"
        return "bigint" if -_INT8 <= value < _INT8 else "numeric"
    if kind is float:
        return "numeric" if math.isfinite(value) else "double precision"  # 'NaN'::float
    if kind is decimal.Decimal:
        return "numeric"
    if kind is datetime.datetime:
        return "timestamp" if value.tzinfo is None else "timestamptz"
    if kind is datetime.date:
        return "date"
    if kind is datetime.time:
        return "time" if value.tzinfo is None else "timetz"
    if kind is datetime.timedelta:
        return "interval"
    if kind in (bytes, bytearray, memoryview):
        return "bytea"
    return None


@dataclass
class _Shape:
    """A statement as PostgreSQL's ``PREPARE`` takes it."""

    names: tuple[str, ...]  # the parameters, in the order of $1, $2, ...
    body: str  # the statement with $n for each parameter and '%' for '%%'
    arguments: str  # what follows "EXECUTE name": "(%(a)s, %(b)s)", or "" without parameters
    seen: int = 0  # executions by this cache (approximate under threads)
    refused: set[tuple[str, ...]] = field(default_factory=set)  # failed signatures
    statement_names: dict[tuple[str, ...], str] = field(default_factory=dict)


def _shape_of(statement: str) -> _Shape | None:
    """``statement`` (psycopg2's ``pyformat``) as a statement to prepare, or ``None``
    if it cannot be one (a ``$`` of its own, or a lone ``%``)."""
    if "$" in statement:
        return None
    names: list[str] = []
    lone = False

    def replace(match: re.Match[str]) -> str:
        nonlocal lone
        name = match.group(1)
        if name is None:
            lone = lone or match.group(0) == "%"
            return "%"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    body = _PLACEHOLDER.sub(replace, statement)
    if lone:
        return None
    args = ", ".join(f"%({n})s" for n in names)
    return _Shape(tuple(names), body, f"({args})" if names else "")


class PreparedStatements:
    """The prepared statements of one :class:`~sqlperf.cache.QueryCache`'s misses.

    Args:
        threshold: executions of a statement by this cache before it is prepared.
        max_per_connection: statements prepared on one connection at most.
    """

    def __init__(self, *, threshold: int = 3, max_per_connection: int = 100) -> None:
        self.threshold = threshold
        self.max_per_connection = max_per_connection
        self._shapes = Memo(1024)  # statement -> _Shape, or False: cannot be prepared
        self._lock = threading.Lock()
        self.executions = 0  # statements answered by EXECUTE

    def execute(
        self, cursor: Any, statement: str, parameters: Mapping[str, Any], info: dict[Any, Any]
    ) -> bool:
        """Run ``statement`` on psycopg2's ``cursor`` (its connection in autocommit) as a
        prepared statement; ``False`` if it is not one to prepare (nothing was run:
        the caller runs it as text). ``info`` is the pooled connection's ``info``.

        Raises:
            Exception: the statement's own error, from running it as text after its
                ``EXECUTE`` failed; or the driver's error if the connection was lost.
        """
        found = self._candidate(statement, parameters)
        if found is None:
            return False
        shape, types, name = found
        connection = cursor.connection
        prepared: set[str] = info.setdefault(_REGISTRY, set())
        if name not in prepared:
            if len(prepared) >= self.max_per_connection:
                return False
            if not self._prepare(connection, name, types, shape.body):
                shape.refused.add(types)
                return False
            prepared.add(name)
        try:
            cursor.execute(f"EXECUTE {name}{shape.arguments}", parameters)
        except Exception:
            if connection.closed:
                raise
        else:
            with self._lock:
                self.executions += 1
            return True
        # The text may run where the prepared statement failed (gone, or stale after a
        # schema change). If the text fails too, the error is the statement's own.
        cursor.execute(statement, parameters)
        shape.refused.add(types)
        prepared.discard(name)
        self._run(connection, f"DEALLOCATE {name}")
        return True

    def _candidate(
        self, statement: str, parameters: Mapping[str, Any]
    ) -> tuple[_Shape, tuple[str, ...], str] | None:
        """The shape, declared types and name to run ``statement`` with as a prepared
        statement, or ``None`` if it is not to be one (yet, or at all)."""
        shape = self._shapes.get(statement)
        if shape is None:
            shape = _shape_of(statement) or False
            self._shapes.put(statement, shape)
        if shape is False:
            return None
        shape.seen += 1
        if shape.seen <= self.threshold:
            return None
        declared = tuple(
            declared_type(parameters[n]) if n in parameters else None for n in shape.names
        )
        if None in declared:
            return None
        types = cast("tuple[str, ...]", declared)
        if types in shape.refused:
            return None
        name = shape.statement_names.get(types)
        if name is None:
            digest = hashlib.blake2b(f"{types}\0{shape.body}".encode(), digest_size=8)
            name = shape.statement_names[types] = f"sqlperf_{digest.hexdigest()}"
        return shape, types, name

    def _prepare(self, connection: Any, name: str, types: tuple[str, ...], body: str) -> bool:
        """``PREPARE`` on ``connection``: whether ``name`` is prepared there now."""
        declared = f"({', '.join(types)})" if types else ""
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"PREPARE {name}{declared} AS {body}")
        except Exception as exc:
            if connection.closed:
                raise
            # Already there (a pooler's server connection): the name says what it is.
            return getattr(exc, "pgcode", None) == "42P05"
        return True

    @staticmethod
    def _run(connection: Any, sql: str) -> None:
        """Run ``sql`` on its own cursor, ignoring its error unless the connection is lost."""
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
        except Exception:
            if connection.closed:
                raise
