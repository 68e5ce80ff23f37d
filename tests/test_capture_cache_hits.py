"""Result-cache hits answered in the session count in the recorder's scope."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqlperf import QueryCache, QueryRecorder
from sqlperf.cache import MemoryBackend


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'hits.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(Item(id=1, name="one"))
        s.commit()
    yield engine
    engine.dispose()


def test_session_hits_count_in_the_scope_once(engine: Engine) -> None:
    cache = QueryCache(MemoryBackend(), cache_all=True).attach(engine)
    factory = sessionmaker(engine)
    cache.install(factory)
    recorder = QueryRecorder().attach(engine)
    stop = recorder.count_cache_hits(cache)
    try:
        query = select(Item.id, Item.name).where(Item.id == 1)
        with factory() as s:
            s.execute(query).all()  # a miss: fills the cache
        with recorder.scope() as scope, factory() as s:
            assert s.execute(query).all() == [(1, "one")]
        assert (scope.queries, scope.cache_hits) == (0, 1)
        assert cache.stats().hits == 1

        stop()
        with recorder.scope() as after, factory() as s:
            s.execute(query).all()
        assert (after.queries, after.cache_hits) == (0, 0)
        assert cache.stats().hits == 2
    finally:
        recorder.close()
        cache.close()
