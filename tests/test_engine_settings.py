"""Each tuned setting is in force on a live connection of each dialect."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, exc, text
from sqlalchemy.pool import NullPool, QueuePool

from sqlperf import (
    ConfigurationError,
    MissingDependency,
    PoolPlan,
    UnsupportedDatabase,
    create_optimized_engine,
    plan_pool,
    pool_status,
)

MakeEngine = Callable[..., Engine]


def _new_connection_values(engine: Engine, sql: str, n: int = 2) -> list[object]:
    """Run ``sql`` on ``n`` distinct pooled connections at once."""
    conns = [engine.connect() for _ in range(n)]
    try:
        return [c.exec_driver_sql(sql).scalar() for c in conns]
    finally:
        for c in conns:
            c.close()


# -- SQLite --------------------------------------------------------------------


def test_sqlite_file_pragmas_on_every_connection(sqlite_file_url: str, make_engine: MakeEngine):
    engine = make_engine(sqlite_file_url)
    assert _new_connection_values(engine, "PRAGMA journal_mode") == ["wal", "wal"]
    assert _new_connection_values(engine, "PRAGMA synchronous") == [1, 1]  # NORMAL
    assert _new_connection_values(engine, "PRAGMA foreign_keys") == [1, 1]
    assert _new_connection_values(engine, "PRAGMA busy_timeout") == [5000, 5000]


def test_sqlite_foreign_keys_enforced(sqlite_file_url: str, make_engine: MakeEngine):
    engine = make_engine(sqlite_file_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))"
        )
    with pytest.raises(exc.IntegrityError), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO child VALUES (1, 42)")


def test_sqlite_memory_is_one_database_shared_by_threads(make_engine: MakeEngine):
    engine = make_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE shared (v INTEGER)")
        conn.exec_driver_sql("INSERT INTO shared VALUES (1)")
    seen: list[int] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"INSERT INTO shared VALUES ({i})")
                seen.append(conn.exec_driver_sql("SELECT count(*) FROM shared").scalar_one())
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Threads took turns on the single connection: each saw its own insert and all earlier ones.
    assert sorted(seen) == list(range(2, 10))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM shared").scalar_one() == 9
    status = pool_status(engine)
    assert status.size == 1
    assert status.max_overflow == 0


def test_sqlite_memory_settings(make_engine: MakeEngine):
    engine = make_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


def test_sqlite_read_only_refuses_writes(sqlite_file_url: str, make_engine: MakeEngine):
    writer = make_engine(sqlite_file_url)
    with writer.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    reader = make_engine(sqlite_file_url, read_only=True)
    with reader.connect() as conn:
        assert conn.exec_driver_sql("SELECT v FROM t").scalar_one() == 1
    with pytest.raises(exc.OperationalError, match="readonly"), reader.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")


def test_sqlite_read_only_needs_existing_file(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        create_optimized_engine(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)
    with pytest.raises(ConfigurationError, match="memory"):
        create_optimized_engine("sqlite://", read_only=True)


# -- PostgreSQL ----------------------------------------------------------------


def test_postgres_settings(postgres_url: str, make_engine: MakeEngine):
    engine = make_engine(
        postgres_url, application_name="sqlperf-test-app", statement_timeout_ms=1500
    )
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW application_name").scalar() == "sqlperf-test-app"
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "1500ms"
        assert conn.exec_driver_sql("SHOW default_transaction_read_only").scalar() == "off"
        # TCP keepalives are set on the client's socket by libpq.
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None
        sock = socket.socket(fileno=os.dup(dbapi_conn.fileno()))
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        finally:
            sock.close()
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    plan = plan_pool("web")
    assert pool.size() == plan.pool_size
    assert pool.timeout() == plan.pool_timeout


def test_postgres_default_application_name(postgres_url: str, make_engine: MakeEngine):
    engine = make_engine(postgres_url, workload="worker")
    with engine.connect() as conn:
        assert str(conn.exec_driver_sql("SHOW application_name").scalar()).endswith("/worker")
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"


def test_postgres_statement_timeout_cancels(postgres_url: str, make_engine: MakeEngine):
    engine = make_engine(postgres_url, statement_timeout_ms=50)
    with pytest.raises(exc.OperationalError, match="statement timeout"), engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_sleep(5)")


def test_postgres_read_only_refuses_writes(postgres_url: str, make_engine: MakeEngine):
    engine = make_engine(postgres_url, read_only=True)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW default_transaction_read_only").scalar() == "on"
    with pytest.raises(exc.InternalError, match="read-only"), engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE sqlperf_never_created (v int)")


# -- MariaDB / MySQL -------------------------------------------------------------


def test_mysql_utf8mb4_round_trips_4_byte_characters(mysql_url: str, make_engine: MakeEngine):
    engine = make_engine(mysql_url, statement_timeout_ms=2500)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT @@character_set_connection").scalar() == "utf8mb4"
        assert conn.exec_driver_sql("SELECT @@max_statement_time").scalar() == 2.5
        # A 4-byte character survives (MySQL's 3-byte "utf8" would mangle it).
        assert conn.execute(text("SELECT :s"), {"s": "ok \U0001f680"}).scalar() == "ok \U0001f680"


def test_mysql_read_only_refuses_writes(mysql_url: str, make_engine: MakeEngine):
    writer = make_engine(mysql_url)
    with writer.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS sqlperf_ro_probe (v int)")
    try:
        reader = make_engine(mysql_url, read_only=True)
        with reader.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@tx_read_only").scalar() == 1
        with pytest.raises(exc.OperationalError, match="READ ONLY"), reader.begin() as conn:
            conn.exec_driver_sql("INSERT INTO sqlperf_ro_probe VALUES (1)")
    finally:
        with writer.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS sqlperf_ro_probe")


def test_mysql_statement_timeout_cancels(mysql_url: str, make_engine: MakeEngine):
    engine = make_engine(mysql_url, statement_timeout_ms=100)
    with pytest.raises(exc.OperationalError, match="max_statement_time"), engine.connect() as c:
        # SLEEP() returns 1 when interrupted; a SELECT over a slow subquery is cancelled.
        c.exec_driver_sql(
            "SELECT count(*) FROM information_schema.columns a, "
            "information_schema.columns b, information_schema.columns c"
        )


def test_mysql_loopback_skips_tls_setup(mysql_url: str, make_engine: MakeEngine):
    engine = make_engine(mysql_url)
    with engine.connect() as conn:
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None
        assert dbapi_conn.ssl is False  # PyMySQL did not build a TLS context


def test_mysql_tls_the_user_asked_for_is_kept(mysql_url: str, make_engine: MakeEngine):
    # The test server has TLS off, so a connection that really requires TLS must fail:
    # proof that sqlperf did not quietly turn the requirement off.
    engine = make_engine(
        mysql_url, connect_args={"ssl_verify_cert": True, "ssl_ca": "/nonexistent"}
    )
    with pytest.raises((exc.OperationalError, FileNotFoundError)), engine.connect():
        pass


def _com_rollback(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Com_rollback'").one()[1])


def test_mysql_checkin_without_work_sends_no_rollback(mysql_url: str, make_engine: MakeEngine):
    probe = create_engine(mysql_url, poolclass=NullPool)
    plain = create_engine(mysql_url)
    tuned = make_engine(mysql_url)
    try:
        for engine in (plain, tuned):
            with engine.connect():
                pass
        before = _com_rollback(probe)
        for _ in range(50):
            tuned.raw_connection().close()
            with tuned.connect():
                pass
        after_tuned = _com_rollback(probe)
        for _ in range(50):
            plain.raw_connection().close()
        after_plain = _com_rollback(probe)
    finally:
        plain.dispose()
        probe.dispose()
    # Each probe connection ends with one rollback of its own; allow for those.
    assert after_tuned - before <= 2
    assert after_plain - after_tuned >= 50  # the control: plain SQLAlchemy pays one each


def _left_in_transaction(engine: Engine, statement: str) -> int:
    """Run ``statement`` on a raw pooled connection, return it, and ask the next user
    of that (only) connection whether a transaction is still open."""
    raw = engine.raw_connection()
    cursor = raw.cursor()
    if "VALUES (1)" in statement:
        with pytest.raises(Exception, match="Duplicate"):
            cursor.execute(statement)
    else:
        cursor.execute(statement)
    raw.close()
    raw = engine.raw_connection()
    cursor = raw.cursor()
    cursor.execute("SELECT @@in_transaction")  # reads a variable, opens no transaction
    row = cursor.fetchone()
    assert row is not None
    (open_trx,) = row
    raw.rollback()
    raw.close()
    return int(open_trx)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO sqlperf_rb_probe VALUES (2)",  # uncommitted write
        "INSERT INTO sqlperf_rb_probe VALUES (1)",  # failed write: InnoDB keeps a lock
        "SELECT * FROM sqlperf_rb_probe",  # a read view
    ],
)
def test_mysql_checkin_still_rolls_back_real_work(
    mysql_url: str, make_engine: MakeEngine, statement: str
):
    tuned = make_engine(mysql_url, pool_size=1, max_overflow=0)
    # The control: a pool that never resets shows what the probe detects.
    control = create_engine(mysql_url, pool_size=1, max_overflow=0, pool_reset_on_return=None)
    with tuned.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS sqlperf_rb_probe (id int primary key) ENGINE=InnoDB"
        )
        conn.exec_driver_sql("DELETE FROM sqlperf_rb_probe")
        conn.exec_driver_sql("INSERT INTO sqlperf_rb_probe VALUES (1)")
    try:
        assert _left_in_transaction(control, statement) == 1
        control.dispose()
        assert _left_in_transaction(tuned, statement) == 0
        with tuned.connect() as conn:
            ids = conn.exec_driver_sql("SELECT id FROM sqlperf_rb_probe").scalars().all()
        assert ids == [1]
    finally:
        control.dispose()
        with tuned.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS sqlperf_rb_probe")


# -- every dialect -----------------------------------------------------------------


def test_query_works_and_waits_are_counted(engine: Engine):
    before = pool_status(engine).waits
    assert before is not None
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    after = pool_status(engine).waits
    assert after is not None
    assert after.count == before.count + 1


def test_overrides_win(any_url: str, make_engine: MakeEngine):
    if any_url == "sqlite://":
        with pytest.raises(ConfigurationError, match="lives in one connection"):
            make_engine(any_url, pool_size=3)
        return
    engine = make_engine(any_url, pool_size=3, max_overflow=1, pool_timeout=7)
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    assert (pool.size(), pool.timeout()) == (3, 7)
    assert pool_status(engine).max_overflow == 1


def test_user_poolclass_is_respected(any_url: str, make_engine: MakeEngine):
    engine = make_engine(any_url, poolclass=NullPool)
    assert isinstance(engine.pool, NullPool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert pool_status(engine).waits is None


def test_user_connect_args_and_url_query_win(postgres_url: str, make_engine: MakeEngine):
    engine = make_engine(
        postgres_url,
        connect_args={
            "application_name": "from-connect-args",
            "options": "-c statement_timeout=777",
        },
        statement_timeout_ms=100,
    )
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW application_name").scalar() == "from-connect-args"
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "777ms"
    engine = make_engine(postgres_url + "?application_name=from-url")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW application_name").scalar() == "from-url"


# -- errors ----------------------------------------------------------------------------


def test_plan_pool_by_workload():
    web, worker, batch = (plan_pool(w, cpus=4) for w in ("web", "worker", "batch"))
    assert isinstance(web, PoolPlan)
    assert (web.pool_size, web.max_overflow) == (18, 9)
    assert (worker.pool_size, worker.max_overflow) == (5, 2)
    assert (batch.pool_size, batch.max_overflow) == (2, 2)
    assert web.pool_timeout < worker.pool_timeout < batch.pool_timeout
    assert plan_pool("web", cpus=64).pool_size == 20  # capped: the server is shared


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"workload": "api"}, ConfigurationError, "unknown workload 'api'"),
        ({"statement_timeout_ms": 0}, ConfigurationError, "statement_timeout_ms"),
        ({"ping_after_idle_s": -1}, ConfigurationError, "ping_after_idle_s"),
        ({"pool_sizee": 3}, ConfigurationError, "pool_sizee"),
    ],
)
def test_bad_options(kwargs: dict[str, object], error: type[Exception], match: str):
    with pytest.raises(error, match=match):
        create_optimized_engine("sqlite://", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("not a url", ConfigurationError, "could not parse database URL"),
        ("foodb://u:pw@h/db", UnsupportedDatabase, "no dialect"),
        ("mssql+pymssql://u:pw@h/db", UnsupportedDatabase, "cannot tune 'mssql'"),
        ("postgresql+asyncpg://u:pw@h/db", UnsupportedDatabase, "asyncio"),
        ("postgresql+pg8000://u:pw@h/db", MissingDependency, "pip install pg8000"),
    ],
)
def test_bad_urls(url: str, error: type[Exception], match: str):
    with pytest.raises(error, match=match) as info:
        create_optimized_engine(url)
    assert "pw" not in str(info.value)


def test_missing_dependency_is_an_import_error():
    err = MissingDependency("psycopg2", extra="postgres")
    assert isinstance(err, ImportError)
    assert "pip install 'sqlperf[postgres]'" in str(err)


def test_mysql_tcp_timeouts_in_force_without_python_timeout_mode(
    mysql_url: str, make_engine: MakeEngine
):
    engine = make_engine(mysql_url, workload="worker")
    raw = engine.raw_connection()
    try:
        sock = raw.dbapi_connection._sock  # type: ignore[union-attr]
        assert sock.gettimeout() is None  # blocking: no poll() before each recv
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        user_timeout_ms = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        assert user_timeout_ms == plan_pool("worker").read_write_timeout_s * 1000
    finally:
        raw.close()
