"""Staging tables: a batch copied into a temporary table, then one set-based statement.

PostgreSQL's upserts and updates, and MySQL's updates, run best as one statement
joining the target with the batch (``INSERT ... SELECT ... ON CONFLICT``,
``UPDATE ... FROM``, ``UPDATE ... JOIN``); :class:`Stage` puts the batch in a
temporary table for them: filled by COPY on PostgreSQL, by PyMySQL's multi-row
``executemany`` on MySQL. The table lives for one batch, inside the batch's
transaction (dropped at its end; a rollback takes it away too).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Connection, MetaData, Table, insert

from sqlperf.bulk.driver import ManyWriter, copy_rows, executemany_writer, raw_execute

__all__ = ["Stage"]


class Stage:
    """A temporary table with the ``columns`` of ``table`` (same names and types, no constraints).

    Attributes:
        table: the staging table, for statements that read it; its columns have
            the keys of ``columns``.
    """

    def __init__(self, table: Table, columns: Sequence[str], conn: Connection) -> None:
        self._target = table
        self._columns = list(columns)
        name = f"sqlperf_stage_{uuid.uuid4().hex[:12]}"
        self.table = Table(
            name,
            MetaData(),
            *(Column(table.c[k].name, table.c[k].type, key=k) for k in columns),
        )
        self._dialect = conn.dialect
        self._send: ManyWriter | None = None
        if self._dialect.name != "postgresql":
            self._send = executemany_writer(insert(self.table), self.table, columns, conn.dialect)

    def fill(self, conn: Connection, rows: Sequence[Sequence[Any]], index: Sequence[str]) -> None:
        """Create the table and put ``rows`` in it, indexed on ``index`` (MySQL)."""
        quote = self._dialect.identifier_preparer
        name = quote.quote(self.table.name)
        names = ", ".join(quote.format_column(self._target.c[k]) for k in self._columns)
        source = quote.format_table(self._target)
        if self._send is None:
            raw_execute(
                conn,
                f"CREATE TEMPORARY TABLE {name} ON COMMIT DROP AS "
                f"SELECT {names} FROM {source} WITH NO DATA",
            )
            copy_rows(conn, self._target, self._columns, rows, into=self.table.name)
            return
        keys = ", ".join(quote.format_column(self._target.c[k]) for k in index)
        raw_execute(
            conn,
            f"CREATE TEMPORARY TABLE {name} (INDEX ({keys})) SELECT {names} FROM {source} LIMIT 0",
        )
        self._send(conn, rows)

    def drop(self, conn: Connection) -> None:
        """Drop the table (at the end of each batch: the next one makes its own)."""
        temporary = "" if self._dialect.name == "postgresql" else "TEMPORARY "
        name = self._dialect.identifier_preparer.quote(self.table.name)
        raw_execute(conn, f"DROP {temporary}TABLE {name}")
