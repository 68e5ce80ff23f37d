"""Dead connections, exhausted pools, leaks and forks."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, create_engine, exc, text
from sqlalchemy.pool import NullPool

from sqlperf import PoolTimeout, pool_status
from sqlperf.pool import install_pool_listeners

MakeEngine = Callable[..., Engine]


def _warm(engine: Engine, n: int) -> list[int]:
    """Open ``n`` pooled connections at once, return their server-side ids."""
    conns = [engine.connect() for _ in range(n)]
    try:
        sql = (
            "SELECT pg_backend_pid()"
            if engine.dialect.name == "postgresql"
            else "SELECT CONNECTION_ID()"
        )
        return [int(c.exec_driver_sql(sql).scalar_one()) for c in conns]
    finally:
        for c in conns:
            c.close()


def _kill_all(admin: Engine, ids: list[int]) -> None:
    """Kill the server sessions ``ids`` and wait until the server has ended them."""
    pg = admin.dialect.name == "postgresql"
    with admin.connect() as conn:
        for i in ids:
            if pg:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": i})
            else:
                conn.exec_driver_sql(f"KILL {int(i)}")
        alive_sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:ids)"
            if pg
            else "SELECT count(*) FROM information_schema.processlist WHERE id IN :ids"
        )
        stmt = text(alive_sql)
        if not pg:
            from sqlalchemy import bindparam

            stmt = stmt.bindparams(bindparam("ids", expanding=True))
        deadline = time.monotonic() + 10
        while conn.execute(stmt, {"ids": ids}).scalar_one():
            assert time.monotonic() < deadline, "the server did not end the killed sessions"
            time.sleep(0.02)
            conn.rollback()


def test_control_plain_engine_fails_after_kill(server_url: str):
    """Without a liveness check, the first query after the kill fails: the kill is real."""
    engine = create_engine(server_url, pool_size=3)
    admin = create_engine(server_url, poolclass=NullPool)
    try:
        _kill_all(admin, _warm(engine, 3))
        with pytest.raises(exc.OperationalError), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
        admin.dispose()


def test_killed_connections_are_replaced(server_url: str, make_engine: MakeEngine):
    engine = make_engine(server_url, pool_size=3, max_overflow=0)
    admin = create_engine(server_url, poolclass=NullPool)
    try:
        old = _warm(engine, 3)
        _kill_all(admin, old)
        # Every one of the three pooled connections is dead; each checkout gets a live one.
        new = _warm(engine, 3)
        assert not set(old) & set(new)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        admin.dispose()


@pytest.mark.parametrize("path", ["socket", "idle"])
def test_each_liveness_path_alone_recovers(server_url: str, path: str):
    """The socket check and the idle-window ping each recover without the other."""
    engine = create_engine(server_url, pool_size=2)
    admin = create_engine(server_url, poolclass=NullPool)
    listeners = install_pool_listeners(
        engine,
        ping_after_idle_s=3600.0 if path == "socket" else 0.0,
        socket_check=path == "socket",
        monitor=None,
    )
    try:
        _kill_all(admin, _warm(engine, 2))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        listeners.remove()
        assert listeners.listeners == []
        engine.dispose()
        admin.dispose()


def test_exhausted_pool_raises_clear_timeout(any_url: str, make_engine: MakeEngine):
    timeout = 0.3
    memory = any_url == "sqlite://"  # a :memory: database is one connection
    sizes = {} if memory else {"pool_size": 1, "max_overflow": 1}
    engine = make_engine(any_url, pool_timeout=timeout, **sizes)
    size = 1 if memory else 2
    held = [engine.connect() for _ in range(size)]
    errors: list[BaseException] = []
    elapsed: list[float] = []

    def checkout() -> None:
        start = time.monotonic()
        try:
            with engine.connect():
                pass
        except BaseException as err:
            errors.append(err)
        elapsed.append(time.monotonic() - start)

    threads = [threading.Thread(target=checkout) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in held:
        c.close()
    assert len(errors) == 3
    for err in errors:
        assert isinstance(err, PoolTimeout)
        assert isinstance(err, exc.TimeoutError)  # plain SQLAlchemy handlers still catch it
        msg = str(err)
        assert f"pool_timeout={timeout:g} s" in msg
        assert f"{size} checked out" in msg
        assert "check_pool_budget" in msg
    # It waited its pool_timeout (the pool measures with time.time: allow for clock slew).
    assert min(elapsed) >= timeout * 0.9
    waits = pool_status(engine).waits
    assert waits is not None
    assert waits.timeouts == 3
    assert waits.max_ms >= timeout * 1000
    with engine.connect() as conn:  # and the pool works again once connections return
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_leaked_connection_is_logged_once_with_its_stack(
    sqlite_file_url: str, make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
):
    engine = make_engine(sqlite_file_url, leak_threshold_s=0.05)
    caplog.set_level(logging.WARNING, logger="sqlperf.pool")

    def forgetful_handler() -> object:
        return engine.connect()

    leaked = forgetful_handler()
    with engine.connect():
        pass
    time.sleep(0.1)
    assert pool_status(engine).leaked == 1
    assert pool_status(engine).leaked == 1
    warnings = [r for r in caplog.records if "connection held for" in r.getMessage()]
    assert len(warnings) == 1
    assert "forgetful_handler" in warnings[0].getMessage()
    leaked.close()  # type: ignore[attr-defined]
    assert pool_status(engine).leaked == 0


def _backend_id(engine: Engine) -> int:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        return int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())


def test_fork_gets_fresh_connections(server_url: str, make_engine: MakeEngine):
    engine = make_engine(server_url, pool_size=1, max_overflow=0)
    parent_id = _backend_id(engine)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its session id, never return into pytest
        code = 1
        try:
            os.close(read_fd)
            child_id = _backend_id(engine)
            # Let the child drop and collect the parent's connection objects, as a
            # long-lived worker would, before the parent looks at its session.
            gc.collect()
            time.sleep(0.2)
            os.write(write_fd, str(child_id).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        child_id = int(pipe.read() or -1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id not in (-1, parent_id)
    # The parent's pooled connection was neither used nor closed by the child.
    assert _backend_id(engine) == parent_id
