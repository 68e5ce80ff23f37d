"""Staging tables: a batch copied into a temporary table, then one set-based statement.

PostgreSQL's upserts and updates, and MySQL's updates, run best as one statement
joining the target with the batch (``INSERT ... SELECT ... ON CONFLICT``,
``UPDATE ... FROM``, ``UPDATE ... JOIN``); :class:`Stage` puts the batch in a
temporary table for them: filled by COPY on PostgreSQL, by PyMySQL's multi-row
``executemany`` on MySQL. The table lives for one batch, inside the batch's
transaction: dropped at its end, and taken away by a rollback (on PostgreSQL; a
MySQL temporary table outlives a rollback, and is dropped with its connection).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Column, Connection, MetaData, Table, insert
from sqlalchemy.engine import Dialect

from sqlperf.bulk.driver import ManyWriter, copy_rows, executemany_writer, raw_execute

__all__ = ["Stage"]


class Stage:
    """A temporary table with the ``columns`` of ``table`` (same names and types, no constraints).

    Attributes:
        table: the staging table, for statements that read it; its columns have
            the keys of ``columns``.
    """

    def __init__(self, table: Table, columns: Sequence[str], dialect: Dialect) -> None:
        self._target = table
        self._columns = list(columns)
        name = f"sqlperf_stage_{uuid.uuid4().hex[:12]}"
        self.table = Table(
            name,
            MetaData(),
            *(Column(table.c[k].name, table.c[k].type, key=k) for k in columns),
        )
        self._dialect = dialect
        self._send: ManyWriter | None = None
        if dialect.name != "postgresql":
            self._send = executemany_writer(insert(self.table), self.table, columns, dialect)

    @contextmanager
    def holding(
        self, conn: Connection, rows: Sequence[Sequence[Any]], index: Sequence[str]
    ) -> Iterator[Table]:
        """The table holding ``rows`` (indexed on ``index`` on MySQL), dropped on exit.

        After an error PostgreSQL's rollback takes the table away (the failed
        transaction accepts no DROP); MySQL's temporary tables ignore rollbacks, so
        there it is dropped on the way out, error or not.
        """
        self._fill(conn, rows, index)
        try:
            yield self.table
        except BaseException:
            if self._send is not None:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    self._drop(conn)
            raise
        self._drop(conn)

    def _fill(self, conn: Connection, rows: Sequence[Sequence[Any]], index: Sequence[str]) -> None:
        quote = self._dialect.identifier_preparer
        name = quote.quote(self.table.name)
        names = ", ".join(quote.format_column(self._target.c[k]) for k in self._columns)
        source = quote.format_table(self._target)
        if self._send is None:
            raw_execute(
                conn,
                # Not ON COMMIT DROP: on an AUTOCOMMIT connection that would drop it
                # before the COPY. drop() ends it; a rollback takes it away too.
                f"CREATE TEMPORARY TABLE {name} AS SELECT {names} FROM {source} WITH NO DATA",
            )
            copy_rows(conn, self._target, self._columns, rows, into=self.table.name)
            return
        keys = ", ".join(quote.format_column(self._target.c[k]) for k in index)
        raw_execute(
            conn,
            f"CREATE TEMPORARY TABLE {name} (INDEX ({keys})) SELECT {names} FROM {source} LIMIT 0",
        )
        self._send(conn, rows)

    def _drop(self, conn: Connection) -> None:
        temporary = "" if self._dialect.name == "postgresql" else "TEMPORARY "
        name = self._dialect.identifier_preparer.quote(self.table.name)
        raw_execute(conn, f"DROP {temporary}TABLE {name}")
