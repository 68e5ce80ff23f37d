"""The test matrix itself: every configured server answers and behaves as the tests assume."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine, text

MakeEngine = Callable[..., Engine]


def test_replica_streams_from_primary(postgres_url: str, replica_url: str, make_engine: MakeEngine):
    primary = make_engine(postgres_url)
    replica = make_engine(replica_url, read_only=True)
    table = f"sqlperf_repl_{uuid.uuid4().hex[:10]}"
    with replica.connect() as conn:
        assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar() is True
    with primary.connect() as conn:
        assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
    try:
        with primary.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} (v int)"))
            conn.execute(text(f"INSERT INTO {table} VALUES (42)"))
        deadline = time.monotonic() + 30
        while True:
            with replica.connect() as conn:
                exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar()
                if exists is not None:
                    assert conn.execute(text(f"SELECT v FROM {table}")).scalar() == 42
                    break
            assert time.monotonic() < deadline, "the row never reached the replica"
            time.sleep(0.05)
    finally:
        with primary.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


def test_redis_round_trip(redis_url: str):
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"sqlperf:test:{uuid.uuid4().hex}"
    try:
        client.set(key, b"v", ex=60)
        assert client.get(key) == b"v"
    finally:
        client.delete(key)
        client.close()
