"""sqlperf's own tables: the ``MetaData`` that its Alembic migrations manage.

It holds the two tables of the query recorder's database sink
(:class:`sqlperf.capture.sinks.DatabaseSink`), created by migration ``0002``
(``sqlperf db upgrade --url URL``):

* :data:`query_log_table` (``sqlperf_query_log``): one row per
  :class:`~sqlperf.capture.records.QueryRecord`;
* :data:`query_stats_table` (``sqlperf_query_stats``): one row per
  :class:`~sqlperf.capture.records.StatsRow`.

Both have an autoincrement ``id`` (the order rows were written in) followed by
exactly the columns of :data:`~sqlperf.capture.records.RECORD_COLUMNS` /
:data:`~sqlperf.capture.records.STATS_COLUMNS`, in that order. Per dialect:

* timestamps are ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL; MySQL/MariaDB
  (``DATETIME(6)``) and SQLite keep no zone, so the sink stores naive UTC there;
* floats are double precision everywhere (MySQL's ``FLOAT`` is single precision);
* long texts that can exceed MySQL's 64 KB ``TEXT`` (SQL, fingerprint,
  parameters, plans, histograms, error messages) are ``MEDIUMTEXT`` there, and
  the tables use ``utf8mb4`` whatever the database's default character set;
* ``id`` is ``BIGINT`` (``INTEGER`` on SQLite, where only that autoincrements).

A migration never imports these objects: each spells its types out, so that it
keeps creating what it created when it was written.

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
    ['sqlperf_query_log', 'sqlperf_query_stats']
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeEngine

if TYPE_CHECKING:
    from alembic.runtime.environment import NameFilterParentNames, NameFilterType

__all__ = [
    "NAMING_CONVENTION",
    "TABLE_PREFIX",
    "VERSION_TABLE",
    "include_name",
    "metadata",
    "query_log_table",
    "query_stats_table",
]

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

_MYSQL = ("mysql", "mariadb")


def _id() -> Column[int]:
    # SQLite autoincrements only an INTEGER PRIMARY KEY (the rowid).
    return Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)


def _timestamp() -> TypeEngine[datetime]:
    # MySQL/MariaDB's DATETIME drops microseconds unless given a precision.
    return DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def _long_text() -> TypeEngine[str]:
    # MySQL's TEXT holds 64 KB; MEDIUMTEXT 16 MB.
    return Text().with_variant(mysql.MEDIUMTEXT(), *_MYSQL)


#: One row per :class:`~sqlperf.capture.records.QueryRecord` (slow, failed and
#: N+1 statements), written by :class:`~sqlperf.capture.sinks.DatabaseSink`.
query_log_table = Table(
    f"{TABLE_PREFIX}query_log",
    metadata,
    _id(),
    Column("ts", _timestamp(), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("duration_ms", Double(), nullable=False),
    Column("fingerprint_id", String(16), nullable=False, index=True),
    Column("fingerprint", _long_text(), nullable=False),
    Column("sql", _long_text(), nullable=False),
    Column("params", _long_text()),
    Column("rowcount", BigInteger()),
    Column("executemany", Boolean(), nullable=False),
    Column("count", Integer(), nullable=False),
    Column("engine", String(255)),
    Column("url", Text()),
    Column("dialect", String(255)),
    Column("route", String(16)),
    Column("pool_wait_ms", Double()),
    Column("compiled_cache", String(16)),
    Column("result_cache", String(64)),
    Column("call_site", Text()),
    Column("thread", String(255)),
    Column("request_id", String(255)),
    Column("tags", Text()),
    Column("error_class", String(255)),
    Column("error_message", _long_text()),
    Column("explain", _long_text()),
    Column("host", String(255)),
    Column("pid", Integer()),
    mysql_charset="utf8mb4",
)

#: One row per :class:`~sqlperf.capture.records.StatsRow` (the aggregates of one
#: fingerprint over one window), written by :class:`~sqlperf.capture.sinks.DatabaseSink`.
query_stats_table = Table(
    f"{TABLE_PREFIX}query_stats",
    metadata,
    _id(),
    Column("window_start", _timestamp(), nullable=False, index=True),
    Column("window_end", _timestamp(), nullable=False),
    Column("engine", String(255)),
    Column("url", Text()),
    Column("dialect", String(255)),
    Column("route", String(16)),
    Column("fingerprint_id", String(16), nullable=False, index=True),
    Column("fingerprint", _long_text(), nullable=False),
    Column("sql", _long_text(), nullable=False),
    Column("calls", BigInteger(), nullable=False),
    Column("errors", Integer(), nullable=False),
    Column("rows", BigInteger(), nullable=False),
    Column("n_plus_one", Integer(), nullable=False),
    Column("cache_hits", Integer(), nullable=False),
    Column("cache_misses", Integer(), nullable=False),
    Column("total_ms", Double(), nullable=False),
    Column("mean_ms", Double(), nullable=False),
    Column("p50_ms", Double(), nullable=False),
    Column("p95_ms", Double(), nullable=False),
    Column("p99_ms", Double(), nullable=False),
    Column("max_ms", Double(), nullable=False),
    Column("sample", Double(), nullable=False),
    Column("histogram", _long_text(), nullable=False),
    Column("host", String(255)),
    Column("pid", Integer()),
    mysql_charset="utf8mb4",
)


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
