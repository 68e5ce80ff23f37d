"""sqlperf's own tables: the ``MetaData`` that its Alembic migrations manage.

It is empty for now; a later issue adds the persisted query-log table (the
database sink of the query recorder) to :data:`metadata`, together with the
migration in ``sqlperf/migrations/versions/`` that creates it.

sqlperf shares the application's database, so everything it owns is named so
that it cannot collide with the application's schema:

* every table name starts with :data:`TABLE_PREFIX` (``sqlperf_``);
* its Alembic history is kept in :data:`VERSION_TABLE`
  (``sqlperf_alembic_version``), never in the application's own
  ``alembic_version``;
* :func:`include_name` restricts autogenerate to sqlperf's tables, so
  ``alembic revision --autogenerate`` run against an application database never
  proposes to drop the application's tables.

Constraint names follow :data:`NAMING_CONVENTION`, so migrations can refer to
(and drop) every constraint by a predictable name on every dialect.

Example::

    >>> from sqlperf.schema import metadata
    >>> sorted(metadata.tables)
    []
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from sqlalchemy import MetaData

if TYPE_CHECKING:
    from alembic.runtime.environment import NameFilterParentNames, NameFilterType

__all__ = ["NAMING_CONVENTION", "TABLE_PREFIX", "VERSION_TABLE", "include_name", "metadata"]

#: Prefix of every table sqlperf creates in the application's database.
TABLE_PREFIX = "sqlperf_"

#: The table where Alembic records which of sqlperf's migrations have run.
VERSION_TABLE = "sqlperf_alembic_version"

#: Constraint and index names, SQLAlchemy's recommended convention. Names stay
#: within PostgreSQL's 63 and MySQL's 64 character limits for sqlperf's short
#: table and column names.
NAMING_CONVENTION: Mapping[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: sqlperf's tables. The target of ``sqlperf/migrations/env.py``.
metadata = MetaData(naming_convention=dict(NAMING_CONVENTION))


def include_name(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    """Tell Alembic's autogenerate which database objects belong to sqlperf.

    Used as ``include_name`` in ``env.py`` and in comparisons: only tables
    whose name starts with :data:`TABLE_PREFIX` are compared; the objects
    inside them (columns, indexes, constraints) are always compared.

    Args:
        name: the object's name as reflected from the database.
        type_: ``"schema"``, ``"table"``, ``"column"``, ``"index"``,
            ``"unique_constraint"``, ``"foreign_key_constraint"`` or
            ``"check_constraint"``.
        parent_names: the names of the enclosing schema and table.

    Returns:
        ``True`` when the object is sqlperf's to compare.
    """
    if type_ == "table":
        return name is not None and name.startswith(TABLE_PREFIX)
    return True
