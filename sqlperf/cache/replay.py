"""A DB-API cursor that plays back rows: how a cache hit reaches SQLAlchemy.

A hit is handed to SQLAlchemy as if the database had answered, so Core results
and ORM loading (identity map, eager loads, column types) behave exactly as for
a real query, and no ORM state is ever stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["ReplayCursor"]


class ReplayCursor:
    """The rows of a cached result behind the DB-API cursor interface.

    Args:
        description: ``cursor.description`` of the original query.
        rows: its rows.
        cursor: the real cursor it stands in for; it is closed now, and its
            ``connection`` stays reachable (some dialects read it after a query).
    """

    arraysize = 1

    def __init__(
        self, description: Sequence[Sequence[Any]], rows: list[tuple[Any, ...]], cursor: Any
    ) -> None:
        self.description = description
        self._rows = rows
        self._pos = 0
        self.rowcount = len(rows)
        self.lastrowid = None
        self.connection = getattr(cursor, "connection", None)
        cursor.close()

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row, or ``None``."""
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        """Up to ``size`` (default ``arraysize``) next rows."""
        end = self._pos + (size or self.arraysize)
        rows = self._rows[self._pos : end]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Every remaining row."""
        rows = self._rows[self._pos :] if self._pos else self._rows
        self._pos = len(self._rows)
        return rows

    def close(self) -> None:
        """Forget the rows."""
        self._rows = []
        self._pos = 0

    def __iter__(self) -> Any:
        while (row := self.fetchone()) is not None:
            yield row
