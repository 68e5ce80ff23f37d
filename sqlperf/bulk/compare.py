"""``only_changed``: the SQL telling whether writing a value would change a column."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Text, cast
from sqlalchemy.sql.elements import ColumnElement

__all__ = ["changed"]


def changed(old: ColumnElement[Any], new: ColumnElement[Any], dialect: str) -> ColumnElement[bool]:
    """``old IS DISTINCT FROM new`` (``IS NOT`` on SQLite), NULL-safe.

    PostgreSQL's ``json`` type has no equality operator: JSON values are compared
    as their text, which is what the write would store.
    """
    if dialect == "postgresql" and isinstance(old.type, JSON):
        return cast(old, Text).is_distinct_from(cast(new, Text))
    return old.is_distinct_from(new)
