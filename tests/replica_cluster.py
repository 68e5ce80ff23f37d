"""The real PostgreSQL primary and its streaming replica, for tests that route between them.

The ``pg`` fixture (made available to every test module by ``conftest.py``) makes a
fresh table on the primary and waits until the replica has replayed it;
``pause_replay``/``resume_replay`` stop and restart WAL replay on the replica, so a test
can show a read that must not go there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "PORT",
    "Cluster",
    "make_item_model",
    "pause_replay",
    "pg",
    "resume_replay",
    "wait_replayed",
]

MakeEngine = Callable[..., Engine]
#: Which server answered: 5432 for the primary, 5433 for the replica.
PORT = text("SELECT inet_server_port()")


@dataclass
class Cluster:
    primary: Engine
    replica: Engine
    table: str
    model: type


def make_item_model(table: str) -> type:
    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(40))

    return Item


def wait_replayed(replica: Engine, table: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with replica.connect() as conn:
            if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is not None:
                return
        assert time.monotonic() < deadline, f"{table} never reached the replica"
        time.sleep(0.05)


@pytest.fixture
def pg(postgres_url: str, replica_url: str, make_engine: MakeEngine) -> Iterator[Cluster]:
    """The real primary and its streaming replica, with a fresh table on both."""
    primary = make_engine(postgres_url)
    replica = make_engine(replica_url, read_only=True)
    table = f"sqlperf_rt_{uuid.uuid4().hex[:10]}"
    model = make_item_model(table)
    model.metadata.create_all(primary)  # type: ignore[attr-defined]
    wait_replayed(replica, table)
    try:
        yield Cluster(primary, replica, table, model)
    finally:
        with replica.connect() as conn:  # never leave replay paused
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "SELECT pg_wal_replay_resume()"
            )
        model.metadata.drop_all(primary)  # type: ignore[attr-defined]


def pause_replay(replica: Engine) -> None:
    with replica.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "SELECT pg_wal_replay_pause()"
        )


def resume_replay(replica: Engine) -> None:
    with replica.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "SELECT pg_wal_replay_resume()"
        )
