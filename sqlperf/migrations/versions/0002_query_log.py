"""Query log: the tables of the query recorder's database sink.

Creates ``sqlperf_query_log`` (one row per captured statement) and
``sqlperf_query_stats`` (per-fingerprint aggregates per time window), each with
an autoincrement ``id`` and indexes on its time column and ``fingerprint_id``.

The types are spelled out here rather than imported from ``sqlperf.schema``, so
that this migration keeps creating the same tables when the schema moves on:

* timestamps: ``TIMESTAMP WITH TIME ZONE``; ``DATETIME(6)`` on MySQL/MariaDB
  (microseconds), where the sink stores naive UTC, as on SQLite;
* floats: double precision (MySQL's ``FLOAT`` is single precision);
* long texts: ``TEXT``, ``MEDIUMTEXT`` on MySQL/MariaDB where 64 KB may not do;
* MySQL/MariaDB tables in ``utf8mb4`` whatever the database's default;
* ``id``: ``BIGINT``, ``INTEGER`` on SQLite (where only that autoincrements).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL = ("mysql", "mariadb")


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False)


def _timestamp() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def _long_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), *_MYSQL)


def upgrade() -> None:
    """Create ``sqlperf_query_log`` and ``sqlperf_query_stats`` with their indexes."""
    op.create_table(
        "sqlperf_query_log",
        _id(),
        sa.Column("ts", _timestamp(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column("fingerprint_id", sa.String(16), nullable=False),
        sa.Column("fingerprint", _long_text(), nullable=False),
        sa.Column("sql", _long_text(), nullable=False),
        sa.Column("params", _long_text(), nullable=True),
        sa.Column("rowcount", sa.BigInteger(), nullable=True),
        sa.Column("executemany", sa.Boolean(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("engine", sa.String(255), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("dialect", sa.String(255), nullable=True),
        sa.Column("route", sa.String(16), nullable=True),
        sa.Column("pool_wait_ms", sa.Double(), nullable=True),
        sa.Column("compiled_cache", sa.String(16), nullable=True),
        sa.Column("result_cache", sa.String(64), nullable=True),
        sa.Column("call_site", sa.Text(), nullable=True),
        sa.Column("thread", sa.String(255), nullable=True),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("tags", sa.Text(), nullable=True),
        sa.Column("error_class", sa.String(255), nullable=True),
        sa.Column("error_message", _long_text(), nullable=True),
        sa.Column("explain", _long_text(), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sqlperf_query_log")),
        mysql_charset="utf8mb4",
    )
    op.create_index(op.f("ix_sqlperf_query_log_ts"), "sqlperf_query_log", ["ts"])
    op.create_index(
        op.f("ix_sqlperf_query_log_fingerprint_id"), "sqlperf_query_log", ["fingerprint_id"]
    )

    op.create_table(
        "sqlperf_query_stats",
        _id(),
        sa.Column("window_start", _timestamp(), nullable=False),
        sa.Column("window_end", _timestamp(), nullable=False),
        sa.Column("engine", sa.String(255), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("dialect", sa.String(255), nullable=True),
        sa.Column("route", sa.String(16), nullable=True),
        sa.Column("fingerprint_id", sa.String(16), nullable=False),
        sa.Column("fingerprint", _long_text(), nullable=False),
        sa.Column("sql", _long_text(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("n_plus_one", sa.Integer(), nullable=False),
        sa.Column("cache_hits", sa.Integer(), nullable=False),
        sa.Column("cache_misses", sa.Integer(), nullable=False),
        sa.Column("total_ms", sa.Double(), nullable=False),
        sa.Column("mean_ms", sa.Double(), nullable=False),
        sa.Column("p50_ms", sa.Double(), nullable=False),
        sa.Column("p95_ms", sa.Double(), nullable=False),
        sa.Column("p99_ms", sa.Double(), nullable=False),
        sa.Column("max_ms", sa.Double(), nullable=False),
        sa.Column("sample", sa.Double(), nullable=False),
        sa.Column("histogram", _long_text(), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sqlperf_query_stats")),
        mysql_charset="utf8mb4",
    )
    op.create_index(
        op.f("ix_sqlperf_query_stats_window_start"), "sqlperf_query_stats", ["window_start"]
    )
    op.create_index(
        op.f("ix_sqlperf_query_stats_fingerprint_id"), "sqlperf_query_stats", ["fingerprint_id"]
    )


def downgrade() -> None:
    """Drop ``sqlperf_query_stats`` and ``sqlperf_query_log`` (their rows are lost)."""
    op.drop_index(op.f("ix_sqlperf_query_stats_fingerprint_id"), table_name="sqlperf_query_stats")
    op.drop_index(op.f("ix_sqlperf_query_stats_window_start"), table_name="sqlperf_query_stats")
    op.drop_table("sqlperf_query_stats")
    op.drop_index(op.f("ix_sqlperf_query_log_fingerprint_id"), table_name="sqlperf_query_log")
    op.drop_index(op.f("ix_sqlperf_query_log_ts"), table_name="sqlperf_query_log")
    op.drop_table("sqlperf_query_log")
