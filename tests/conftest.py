"""Shared fixtures: one URL per database, found through environment variables.

Servers are found through ``SQLPERF_TEST_POSTGRES_URL``,
``SQLPERF_TEST_POSTGRES_REPLICA_URL``, ``SQLPERF_TEST_MYSQL_URL`` and
``SQLPERF_TEST_REDIS_URL``, each defaulting to the loopback service. A server
that does not answer skips its tests with the reason, or fails them when
``SQLPERF_REQUIRE_SERVICES=1`` (CI sets it).
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from sqlperf import create_optimized_engine, safe_url

# The harness modules' fixtures, for every test module: the replica cluster (``pg``),
# and the integrations' recorder and Redis cache on it.
from tests.replica_cluster import pg  # noqa: F401
from tests.web_harness import query_cache, recorder  # noqa: F401

URLS = {
    "postgresql": os.environ.get(
        "SQLPERF_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
    ),
    "replica": os.environ.get(
        "SQLPERF_TEST_POSTGRES_REPLICA_URL", "postgresql+psycopg2://postgres@127.0.0.1:5433/test"
    ),
    "mysql": os.environ.get("SQLPERF_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "redis": os.environ.get("SQLPERF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
}
REQUIRE_SERVICES = os.environ.get("SQLPERF_REQUIRE_SERVICES", "") not in ("", "0", "false")

#: Every dialect the parametrized fixtures run on.
DIALECTS = ["sqlite-file", "sqlite-memory", "postgresql", "mysql"]


@cache
def _probe(name: str) -> str | None:
    """Return the server version of service ``name``, or None if it is unreachable."""
    url = URLS[name]
    try:
        if name == "redis":
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=2)
            try:
                return f"Redis {client.info('server')['redis_version']}"
            finally:
                client.close()
        engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                version = conn.execute(text("SELECT version()")).scalar_one()
                if (
                    name == "replica"
                    and not conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one()
                ):
                    return None
                return str(version).split(" on ")[0]
        finally:
            engine.dispose()
    except Exception:
        return None


def wait_until(condition: Callable[[], bool], what: str, deadline_s: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail (not hang) after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline_s} s waiting until {what}")
        time.sleep(0.005)


@contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    """Run the block with the garbage collector off; on leaving, the list holds what a
    collection then found reachable only through reference cycles (cycles left by the
    block: those made before it are collected first)."""
    found: list[object] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def require(name: str) -> str:
    """Return the URL of service ``name``; skip (or fail in CI) if it is down."""
    if _probe(name) is None:
        reason = f"{name} is not reachable at {safe_url(URLS[name])}"
        if name == "replica":
            reason += " (or is not a streaming replica; run scripts/pg-replica.sh)"
        if REQUIRE_SERVICES:
            pytest.fail(f"SQLPERF_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    return URLS[name]


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for name, url in URLS.items():
        version = _probe(name)
        lines.append(f"sqlperf {name}: {version or 'unreachable'} ({safe_url(url)})")
    return lines


@pytest.fixture
def postgres_url() -> str:
    return require("postgresql")


@pytest.fixture
def replica_url() -> str:
    return require("replica")


@pytest.fixture
def mysql_url() -> str:
    return require("mysql")


@pytest.fixture
def redis_url() -> str:
    return require("redis")


@pytest.fixture
def sqlite_file_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def sqlite_memory_url() -> str:
    return "sqlite://"


@pytest.fixture(params=DIALECTS)
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for each dialect sqlperf supports (SQLite file and memory, PostgreSQL, MariaDB)."""
    kind: str = request.param
    if kind == "sqlite-file":
        return f"sqlite:///{tmp_path / 'test.db'}"
    if kind == "sqlite-memory":
        return "sqlite://"
    return require(kind)


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    """A URL for each database server (PostgreSQL, MariaDB)."""
    return require(request.param)


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Engine]]:
    """Build engines with ``create_optimized_engine``; all are disposed at teardown."""
    made: list[Engine] = []

    def make(url: str, **kwargs: object) -> Engine:
        engine = create_optimized_engine(url, **kwargs)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture
def engine(any_url: str, make_engine: Callable[..., Engine]) -> Engine:
    """A sqlperf engine on each dialect."""
    return make_engine(any_url)


@pytest.fixture
def table_name(engine: Engine) -> Iterator[str]:
    """A unique table name on ``engine``'s database, dropped at teardown."""
    name = f"sqlperf_t_{uuid.uuid4().hex[:10]}"
    yield name
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


@pytest.fixture(params=["sqlite-file", "postgresql", "mysql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each dialect: a SQLite file, or a scratch server database."""
    if request.param == "sqlite-file":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    server_url = require(request.param)
    with scratch_database(server_url) as url:
        yield url


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A database of its own on the server of ``server_url``, dropped afterwards; yields its URL.

    For tests of fixed table names (sqlperf's log tables, ``alembic_version``) that must not
    collide with anything else on the server.
    """
    name = f"sqlperf_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
    finally:
        admin.dispose()
