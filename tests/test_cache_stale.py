"""No stale reads across processes: writers commit increasing values, readers read
through the cache (real database, real Redis), and no reader ever sees a value
older than the newest commit that had finished before its read began."""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select, text
from sqlalchemy.orm import registry, sessionmaker

from sqlperf import create_optimized_engine
from sqlperf.cache import QueryCache, RedisBackend, cached
from tests.conftest import require

WRITERS, READERS, COMMITS = 2, 3, 150
DEADLINE_S = 90


def _table(name: str) -> Table:
    return Table(name, MetaData(), Column("id", Integer, primary_key=True), Column("v", Integer))


@dataclass(frozen=True)
class _Job:
    url: str
    redis_url: str
    namespace: str
    table: str


def _writer(job: _Job, committed: Any, lock: Any) -> None:
    engine = create_optimized_engine(job.url, pool_size=1)
    cache = QueryCache(RedisBackend(job.redis_url, namespace=job.namespace)).attach(engine)
    table = job.table
    pg = engine.dialect.name == "postgresql"
    for _ in range(COMMITS):
        with engine.begin() as conn:
            if pg:
                v = conn.execute(text(f"UPDATE {table} SET v = v + 1 RETURNING v")).scalar_one()
            else:
                conn.execute(text(f"UPDATE {table} SET v = LAST_INSERT_ID(v + 1)"))
                v = conn.execute(text("SELECT LAST_INSERT_ID()")).scalar_one()
        # commit() has returned: from now on nobody may read an older value
        with lock:
            committed.value = max(committed.value, int(v))
    cache.detach()
    engine.dispose()


class _Row:
    id: int
    v: int


def _reader(job: _Job, committed: Any, done: Any, out: Any) -> None:
    engine = create_optimized_engine(job.url, pool_size=2)
    t = _table(job.table)
    registry().map_imperatively(_Row, t)
    factory = sessionmaker(engine)
    cache = QueryCache(RedisBackend(job.redis_url, namespace=job.namespace)).install(factory)
    orm_read = select(_Row).where(t.c.id == 1).options(cached())
    stale, reads, n = 0, 0, 0
    while not done.value:
        n += 1
        floor = committed.value  # before the read (its transaction) begins
        if n % 3 == 0:
            # The ORM path: hits answered before a connection is opened.
            with factory() as session:
                v = session.execute(orm_read).scalar_one().v
        else:
            with engine.connect() as conn:
                if n % 3 == 1:
                    # A transaction whose snapshot starts with an uncached read: under
                    # REPEATABLE READ the cached read after it must not store its result.
                    conn.execute(select(t.c.id)).all()
                    time.sleep(0.002)  # let writers commit after this snapshot was taken
                v = cache.execute(conn, select(t.c.v)).scalar_one()
        reads += 1
        if v < floor:
            stale += 1
    stats = cache.stats()
    out.put((stale, reads, stats.hits, stats.stores))
    cache.close()
    engine.dispose()


@pytest.mark.parametrize("db", ["postgresql", "mysql"])
def test_no_stale_reads_across_processes(db: str, redis_url: str):
    url = require(db)
    table = f"cstale_{uuid.uuid4().hex[:8]}"
    ns = f"sqlperf-test-{uuid.uuid4().hex[:8]}"
    setup = create_optimized_engine(url)
    t = _table(table)
    t.metadata.create_all(setup)
    with setup.begin() as conn:
        conn.execute(t.insert().values(id=1, v=0))
    ctx = mp.get_context("fork")
    committed, done, lock, out = ctx.Value("q", 0), ctx.Value("b", False), ctx.Lock(), ctx.Queue()
    job = _Job(url, redis_url, ns, table)
    readers = [
        ctx.Process(target=_reader, args=(job, committed, done, out)) for _ in range(READERS)
    ]
    writers = [ctx.Process(target=_writer, args=(job, committed, lock)) for _ in range(WRITERS)]
    try:
        for p in readers + writers:
            p.start()
        deadline = time.monotonic() + DEADLINE_S
        for p in writers:
            p.join(max(0.1, deadline - time.monotonic()))
            assert p.exitcode == 0, "a writer failed or timed out"
        done.value = True
        results = [out.get(timeout=30) for _ in readers]
        for p in readers:
            p.join(30)
            assert p.exitcode == 0
    finally:
        done.value = True
        for p in readers + writers:
            if p.is_alive():
                p.kill()
        t.metadata.drop_all(setup)
        setup.dispose()
        cleaner = RedisBackend(redis_url, namespace=ns)
        cleaner.clear()
        cleaner.close()
    stale = sum(r[0] for r in results)
    reads = sum(r[1] for r in results)
    hits = sum(r[2] for r in results)
    assert committed.value == WRITERS * COMMITS
    assert reads > 100
    assert hits > 0  # the cache really served reads while the writers committed
    assert stale == 0, f"{stale} of {reads} reads were stale"
