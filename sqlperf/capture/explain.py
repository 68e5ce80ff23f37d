"""Query plans for slow SELECTs, taken after the query on another connection.

Only plain ``EXPLAIN`` is used (``EXPLAIN QUERY PLAN`` on SQLite): the database
plans the statement without running it, so explaining never repeats a query's
work or its side effects, and nothing is ever ``EXPLAIN ANALYZE``-d. The
recorder only asks for plans of statements whose fingerprint is a SELECT.

The plan is taken with the statement's own parameters on a connection checked
out from the same engine, by the recorder's writer thread, so the application's
thread never waits for it. An in-memory SQLite database is private to its
connection, so its plans are reported as unavailable.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from sqlperf.capture.sinks import NO_CAPTURE

__all__ = ["explain_plan"]


def _sqlite_plan(rows: list[tuple[Any, ...]]) -> str:
    # Rows are (id, parent, notused, detail); indent each by its depth in the tree.
    depth: dict[int, int] = {0: -1}
    lines = []
    for node_id, parent, _unused, detail in rows:
        depth[node_id] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node_id] + str(detail))
    return "\n".join(lines)


def _table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [columns, *[["NULL" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        " | ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def explain_plan(engine: Engine, statement: str, parameters: Any) -> str:
    """Return the query plan of ``statement`` as text.

    Args:
        engine: the engine the statement ran on; a connection is checked out of it.
        statement: the SQL as it was sent to the driver (a single SELECT).
        parameters: its DB-API parameters, as they were sent.

    Returns:
        PostgreSQL's ``EXPLAIN`` text, MySQL/MariaDB's ``EXPLAIN`` table, or
        SQLite's ``EXPLAIN QUERY PLAN`` tree.

    Raises:
        sqlalchemy.exc.DBAPIError: if the database cannot plan it.

    Example::

        >>> from sqlalchemy import create_engine
        >>> print(explain_plan(create_engine("sqlite://"), "SELECT 1", ()))
        SCAN CONSTANT ROW
    """
    dialect = engine.dialect.name
    prefix = "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        result = conn.execution_options(**NO_CAPTURE).exec_driver_sql(
            prefix + statement, parameters or ()
        )
        columns = list(result.keys())
        rows = [tuple(row) for row in result]
        conn.rollback()
    if dialect == "sqlite":
        return _sqlite_plan(rows)
    if dialect == "postgresql":
        return "\n".join(str(row[0]) for row in rows)
    return _table(columns, rows)
