"""The cache stepping aside for statement shapes it costs more than it saves.

``Admission`` on its own with a clock of the test's, then ``QueryCache`` on SQLite +
MemoryBackend and PostgreSQL + Redis: a statement whose table is written after
every read stops being looked up and stored, its reads stay fresh, and a statement
that keeps hitting is never touched.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from sqlperf import ConfigurationError
from sqlperf.cache import Admission, MemoryBackend, QueryCache, RedisBackend, cached
from sqlperf.cache.backends import CacheBackend
from tests.conftest import require

MakeEngine = Callable[..., Engine]
US = 1000  # nanoseconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_window_that_costs_more_than_it_saves_skips_for_the_cooldown(clock: Clock):
    admission = Admission(window=10, cooldown_s=30, clock=clock)
    for _ in range(9):  # a 100 us query; each miss costs the cache 30 us
        admission.miss("q", cache_ns=30 * US, query_ns=100 * US)
    assert admission.admits("q")  # the window is not full yet
    admission.hit("q", 20 * US)  # saved 80 us, against 270 us spent
    assert not admission.admits("q")
    assert admission.skipping() == ["q"]
    clock.now += 29.9
    assert not admission.admits("q")
    clock.now += 0.2
    assert admission.admits("q")  # measured again, from an empty window
    assert admission.skipping() == []
    for _ in range(5):
        admission.miss("q", cache_ns=30 * US, query_ns=100 * US)
    for _ in range(5):  # 5 x 80 us saved > 5 x 30 us spent
        admission.hit("q", 20 * US)
    assert admission.admits("q")


def test_the_measure_is_time_not_a_hit_ratio(clock: Clock):
    admission = Admission(window=20, clock=clock)
    # 5% hits on a 10 ms report: the one hit saves more than 19 misses cost.
    for _ in range(19):
        admission.miss("report", cache_ns=100 * US, query_ns=10_000 * US)
    admission.hit("report", 50 * US)
    assert admission.admits("report")
    # 15% hits on a 50 us lookup, where answering a hit takes 80 us: never worth it.
    for _ in range(17):
        admission.miss("lookup", cache_ns=20 * US, query_ns=50 * US)
    for _ in range(3):
        admission.hit("lookup", 80 * US)
    assert not admission.admits("lookup")
    # The same timings with 40% hits, as while the cache warms up after an
    # invalidation: not judged, kept.
    for _ in range(12):
        admission.miss("warming", cache_ns=20 * US, query_ns=50 * US)
    for _ in range(8):
        admission.hit("warming", 80 * US)
    assert admission.admits("warming")
    # A shape that mostly hits is kept whatever its timings: here one quick miss and
    # 19 hits slowed by a busy GIL, which would "lose" on the clock.
    admission.miss("busy", cache_ns=20 * US, query_ns=300 * US)
    for _ in range(19):
        admission.hit("busy", 2_000 * US)
    assert admission.admits("busy")
    for _ in range(10):  # half hits, however slow: kept
        admission.miss("half", cache_ns=20 * US, query_ns=50 * US)
        admission.hit("half", 500 * US)
    assert admission.admits("half")
    assert admission.skipping() == ["lookup"]


def test_a_skipping_shape_is_measured_again_after_enough_reads_without_a_write(clock: Clock):
    admission = Admission(window=10, cooldown_s=600, resume_after=5, clock=clock)
    for _ in range(10):
        admission.miss("q", cache_ns=50 * US, query_ns=10 * US, tables=["orders"])

    def read() -> bool:
        if admission.admits("q"):
            return True
        admission.skipped("q")
        return False

    assert [read() for _ in range(4)] == [False] * 4
    admission.written(["customers"])  # another table: still quiet
    admission.written(["orders"])  # one it reads: counting starts again
    assert [read() for _ in range(6)] == [False] * 5 + [True]  # measured again
    assert admission.skipping() == []
    for _ in range(10):
        admission.miss("q", cache_ns=50 * US, query_ns=10 * US, tables=["orders"])
    assert [read() for _ in range(4)] == [False] * 4
    admission.written(["*"])  # a write sqlperf could not attribute: every table
    assert [read() for _ in range(6)] == [False] * 5 + [True]


def test_shapes_are_forgotten_least_recently_used_first(clock: Clock):
    admission = Admission(window=10, max_shapes=2, clock=clock)
    for _ in range(10):
        admission.miss("a", cache_ns=50 * US, query_ns=10 * US)
    assert not admission.admits("a")
    admission.hit("b", US)
    admission.hit("c", US)  # "a" was used least recently: forgotten, admitted again
    assert admission.admits("a")


@pytest.mark.parametrize(
    "kwargs",
    [{"window": 9}, {"cooldown_s": 0}, {"resume_after": 0}, {"max_shapes": 0}],
    ids=lambda k: next(iter(k)),
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]):
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        Admission(**kwargs)


# -- in a QueryCache, on real databases ---------------------------------------------------


def _backend(kind: str) -> CacheBackend:
    if kind == "memory":
        return MemoryBackend()
    return RedisBackend(require("redis"), namespace=f"sqlperf-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def db(request: pytest.FixtureRequest, tmp_path: Path, make_engine: MakeEngine) -> Iterator[Any]:
    name, kind = request.param.split("+")
    url = f"sqlite:///{tmp_path / 'adm.db'}" if name == "sqlite" else require(name)
    engine = make_engine(url)
    suffix = uuid.uuid4().hex[:8]

    class Base(DeclarativeBase):
        pass

    class Counter(Base):
        __tablename__ = f"adm_counter_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        value: Mapped[int]

    md = MetaData()
    stable = Table(
        f"adm_stable_{suffix}", md, Column("id", Integer, primary_key=True), Column("s", String(9))
    )
    Base.metadata.create_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(Counter), [{"id": 1, "value": 0}])
        conn.execute(insert(stable), [{"id": 1, "s": "fixed"}])
    backend = _backend(kind)
    try:
        yield engine, backend, Counter, stable
    finally:
        backend.clear()
        backend.close()
        Base.metadata.drop_all(engine)
        md.drop_all(engine)


@pytest.mark.parametrize("path", ["core", "orm"])
def test_a_statement_whose_table_is_written_after_every_read_stops_using_the_cache(
    db: Any, path: str
):
    engine, backend, counter, stable = db
    cache = QueryCache(backend, skip_unprofitable=Admission(window=20, cooldown_s=600))
    factory = sessionmaker(engine)
    cache.install(factory)
    table = counter.__table__
    read_counter = select(table.c.value).where(table.c.id == 1).options(cached())
    # A read that costs milliseconds (a 20,000-row recursive count) and is never
    # invalidated: its hits save far more than its one miss cost, on any backend.
    steps = select(literal(1).label("x")).cte("steps", recursive=True)
    steps = steps.union_all(select(steps.c.x + 1).where(steps.c.x < 20_000))
    counted = select(func.count()).select_from(steps).scalar_subquery()
    read_stable = select(stable.c.s, counted).where(stable.c.id == 1).options(cached())
    try:
        for i in range(60):
            if path == "core":
                with engine.connect() as conn:
                    value = conn.execute(read_counter).scalar_one()
                    assert conn.execute(read_stable).one() == ("fixed", 20_000)
            else:
                with factory() as session:
                    value = session.execute(read_counter).scalar_one()
                    assert session.execute(read_stable).one() == ("fixed", 20_000)
            assert value == i  # always the last commit's value: skipping never goes stale
            with engine.begin() as conn:  # the write that invalidates the entry just stored
                conn.execute(update(table).values(value=table.c.value + 1))
        stats = cache.stats()
        # The counter's first 20 lookups missed and stored; the other 40 reads skipped.
        assert stats.bypasses["unprofitable"] == 40
        assert stats.misses == 20 + 1  # and the stable table's first read
        assert stats.hits == 59  # the stable table, every read after its first
        # The writes stop: after 50 reads with no write to its table (the default
        # resume_after), the counter is looked up again, misses once, then hits.
        for _ in range(60):
            if path == "core":
                with engine.connect() as conn:
                    assert conn.execute(read_counter).scalar_one() == 60
            else:
                with factory() as session:
                    assert session.execute(read_counter).scalar_one() == 60
        stats = cache.stats()
        assert stats.bypasses["unprofitable"] == 40 + 50
        assert (stats.misses, stats.hits) == (21 + 1, 59 + 9)
    finally:
        cache.close()


def test_without_skipping_every_read_looks_up_and_stores(db: Any):
    engine, backend, counter, _ = db
    cache = QueryCache(backend, skip_unprofitable=False).attach(engine)
    table = counter.__table__
    read = select(table.c.value).where(table.c.id == 1).options(cached())
    try:
        for _ in range(250):  # more than a default window
            with engine.connect() as conn:
                conn.execute(read).scalar_one()
            with engine.begin() as conn:
                conn.execute(update(table).values(value=table.c.value + 1))
        stats = cache.stats()
        assert stats.misses == 250
        assert "unprofitable" not in stats.bypasses
    finally:
        cache.close()
