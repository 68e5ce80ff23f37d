"""sqlperf's own Alembic migrations, on SQLite, PostgreSQL and MariaDB.

Each server test runs in a database of its own, created and dropped around the
test, so that the fixed table names (``sqlperf_alembic_version``,
``alembic_version``) cannot collide with anything else on the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    inspect,
    select,
)
from sqlalchemy.pool import NullPool

from sqlperf import ConfigurationError
from sqlperf.capture.records import RECORD_COLUMNS, STATS_COLUMNS, QueryRecord, StatsRow
from sqlperf.migrate import current, upgrade
from sqlperf.schema import VERSION_TABLE, include_name, metadata, query_log_table

REPO = Path(__file__).resolve().parent.parent

#: The latest revision.
HEAD = "0002"

#: The tables of migration 0002, with their columns in order.
QUERY_LOG_COLUMNS = {
    "sqlperf_query_log": ["id", *RECORD_COLUMNS],
    "sqlperf_query_stats": ["id", *STATS_COLUMNS],
}
#: NOT NULL exactly where the record type says the field is never None.
NOT_NULL = {
    table: ["id", *(f.name for f in dataclasses.fields(row) if "None" not in str(f.type))]
    for table, row in (("sqlperf_query_log", QueryRecord), ("sqlperf_query_stats", StatsRow))
}
QUERY_LOG_INDEXES = {
    "sqlperf_query_log": {
        "ix_sqlperf_query_log_ts": ["ts"],
        "ix_sqlperf_query_log_fingerprint_id": ["fingerprint_id"],
    },
    "sqlperf_query_stats": {
        "ix_sqlperf_query_stats_window_start": ["window_start"],
        "ix_sqlperf_query_stats_fingerprint_id": ["fingerprint_id"],
    },
}


@pytest.fixture
def app_url(empty_url: str) -> str:
    """An empty application database on each dialect (``empty_url`` of conftest)."""
    return empty_url


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql)]
    finally:
        engine.dispose()


def _make_app_tables(url: str) -> None:
    """What an application that uses Alembic itself already has in its database."""
    app = MetaData()
    Table("alembic_version", app, Column("version_num", String(32), primary_key=True))
    Table("app_users", app, Column("id", Integer, primary_key=True))
    engine = create_engine(url, poolclass=NullPool)
    try:
        app.create_all(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES ('app_rev_42')")
    finally:
        engine.dispose()


def test_upgrade_records_head_in_its_own_version_table(app_url: str) -> None:
    _make_app_tables(app_url)
    assert current(app_url) is None

    assert upgrade(app_url) == HEAD

    assert _rows(app_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]
    assert current(app_url) == HEAD
    # The application's own Alembic history is left alone.
    assert _rows(app_url, "SELECT version_num FROM alembic_version") == [("app_rev_42",)]


def test_upgrade_twice_is_idempotent(app_url: str) -> None:
    assert upgrade(app_url) == HEAD
    engine = create_engine(app_url, poolclass=NullPool)
    try:
        tables_before = sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()

    assert upgrade(app_url, "head") == HEAD
    assert upgrade(app_url, HEAD) == HEAD

    engine = create_engine(app_url, poolclass=NullPool)
    try:
        assert sorted(inspect(engine).get_table_names()) == tables_before
        assert tables_before == sorted([VERSION_TABLE, *QUERY_LOG_COLUMNS])
    finally:
        engine.dispose()
    assert _rows(app_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]


def test_upgrade_to_the_baseline_only(app_url: str) -> None:
    assert upgrade(app_url, "0001") == "0001"
    engine = create_engine(app_url, poolclass=NullPool)
    try:
        assert inspect(engine).get_table_names() == [VERSION_TABLE]
    finally:
        engine.dispose()


def _downgrade(url: str, revision: str) -> None:
    config = Config(
        REPO / "alembic.ini",
        cmd_opts=argparse.Namespace(x=[f"url={url}"]),
        attributes={"configure_logger": False},
    )
    command.downgrade(config, revision)


def test_query_log_tables_created_by_0002_and_dropped_by_its_downgrade(app_url: str) -> None:
    _make_app_tables(app_url)
    assert upgrade(app_url) == HEAD

    engine = create_engine(app_url, poolclass=NullPool)
    try:
        inspector = inspect(engine)
        for table, columns in QUERY_LOG_COLUMNS.items():
            reflected = inspector.get_columns(table)
            assert [c["name"] for c in reflected] == columns
            assert [c["name"] for c in reflected if not c["nullable"]] == NOT_NULL[table]
            assert inspector.get_pk_constraint(table)["constrained_columns"] == ["id"]
            indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(table)}
            assert indexes == QUERY_LOG_INDEXES[table]
    finally:
        engine.dispose()

    _downgrade(app_url, "0001")

    assert current(app_url) == "0001"
    engine = create_engine(app_url, poolclass=NullPool)
    try:
        assert sorted(inspect(engine).get_table_names()) == sorted(
            [VERSION_TABLE, "alembic_version", "app_users"]
        )
    finally:
        engine.dispose()
    # And up again: the downgrade left nothing behind that 0002 would trip on.
    assert upgrade(app_url) == HEAD


def test_query_log_ids_autoincrement(app_url: str) -> None:
    upgrade(app_url)
    engine = create_engine(app_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for _ in range(2):
                conn.execute(
                    query_log_table.insert(),
                    {
                        "ts": datetime(2025, 1, 1, tzinfo=timezone.utc),
                        "kind": "slow",
                        "duration_ms": 1.0,
                        "fingerprint_id": "f",
                        "fingerprint": "SELECT ?",
                        "sql": "SELECT 1",
                        "executemany": False,
                        "count": 1,
                    },
                )
        with engine.connect() as conn:
            ids = conn.execute(select(query_log_table.c.id).order_by("id")).scalars().all()
        assert ids == [1, 2]
        with engine.begin() as conn:
            conn.execute(query_log_table.delete())
    finally:
        engine.dispose()


def test_schema_matches_metadata_after_upgrade(app_url: str) -> None:
    _make_app_tables(app_url)
    upgrade(app_url)
    engine = create_engine(app_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE, "include_name": include_name}
            )
            # The application's tables and both version tables are not sqlperf's business.
            assert compare_metadata(context, metadata) == []

            # A sqlperf_ table that the metadata does not describe is a difference,
            # which shows the comparison looks at the database at all.
            conn.exec_driver_sql("CREATE TABLE sqlperf_stray (id INTEGER PRIMARY KEY)")
            diffs = compare_metadata(context, metadata)
            assert [(d[0], d[1].name) for d in diffs] == [("remove_table", "sqlperf_stray")]
            conn.exec_driver_sql("DROP TABLE sqlperf_stray")
    finally:
        engine.dispose()


def test_upgrade_to_unknown_revision_is_a_configuration_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with pytest.raises(ConfigurationError, match="9999"):
        upgrade(url, "9999")
    assert current(url) is None


def test_offline_mode_renders_sql_with_sqlperf_version_table() -> None:
    buffer = io.StringIO()
    config = Config(output_buffer=buffer)
    config.set_main_option("script_location", str(files("sqlperf").joinpath("migrations")))
    config.set_main_option("sqlalchemy.url", "postgresql+psycopg2://app@db.invalid/app")

    command.upgrade(config, "head", sql=True)

    sql = buffer.getvalue()
    assert f"CREATE TABLE {VERSION_TABLE}" in sql
    assert f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('0001')" in sql
    assert "CREATE TABLE sqlperf_query_log (" in sql
    assert "CREATE TABLE sqlperf_query_stats (" in sql
    assert f"UPDATE {VERSION_TABLE} SET version_num='{HEAD}'" in sql
    assert "alembic_version (" not in sql.replace(VERSION_TABLE, "")


def test_repository_alembic_ini_finds_the_packaged_migrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From any working directory, as `alembic -c alembic.ini -x url=... upgrade head`.
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    config = Config(
        REPO / "alembic.ini",
        cmd_opts=argparse.Namespace(x=[f"url={url}"]),
        attributes={"configure_logger": False},
    )
    command.upgrade(config, "head")
    assert current(url) == HEAD
    # A top-level alembic/ would shadow the alembic package when run from the root.
    assert not (REPO / "alembic").exists()
