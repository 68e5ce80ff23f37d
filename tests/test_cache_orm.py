"""QueryCache in ORM sessions: SQLite + MemoryBackend, PostgreSQL and MariaDB + Redis."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    cast,
    event,
    func,
    inspect,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    load_only,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)
from sqlalchemy.orm import loading as orm_loading

from sqlperf import ConfigurationError, RoutingSession, routing_stats
from sqlperf.cache import (
    LayeredBackend,
    MemoryBackend,
    QueryCache,
    RedisBackend,
    cache_outcome,
    cached,
    no_cache,
)
from sqlperf.cache.backends import CacheBackend
from sqlperf.cache.payload import PayloadCodec
from tests.conftest import cyclic_garbage, require, wait_until

MakeEngine = Callable[..., Engine]
_AT = datetime(2026, 11, 22, 9, 30, 15)


@dataclass
class Shop:
    engine: Engine
    cache: QueryCache
    backend: CacheBackend
    Session: sessionmaker[Session]
    User: Any
    Order: Any


def _models(suffix: str) -> tuple[type[DeclarativeBase], Any, Any]:
    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = f"ou_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(40))
        orders: Mapped[list[Order]] = relationship(back_populates="user", order_by="Order.id")

    class Order(Base):
        __tablename__ = f"oo_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        user_id: Mapped[int] = mapped_column(ForeignKey(User.id))
        total: Mapped[int]
        user: Mapped[User] = relationship(back_populates="orders")

    return Base, User, Order


def _teardown(cache: QueryCache, base: Any, engine: Engine, backend: CacheBackend) -> None:
    cache.close()
    base.metadata.drop_all(engine)
    backend.clear()
    backend.close()


def _backend(kind: str) -> CacheBackend:
    if kind == "memory":
        return MemoryBackend()
    return RedisBackend(require("redis"), namespace=f"sqlperf-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["sqlite+memory", "postgresql+redis", "mysql+redis"])
def shop(request: pytest.FixtureRequest, tmp_path: Path, make_engine: MakeEngine) -> Iterator[Shop]:
    db, kind = request.param.split("+")
    url = f"sqlite:///{tmp_path / 'orm.db'}" if db == "sqlite" else require(db)
    # MySQL's default REPEATABLE READ stores only a transaction's first read (see
    # test_repeatable_read_stores_only_a_transactions_first_read); these tests
    # read several statements per session.
    engine = make_engine(url, **({"isolation_level": "READ COMMITTED"} if db == "mysql" else {}))
    with _open_shop(engine, _backend(kind)) as shop:
        yield shop


@contextmanager
def _open_shop(engine: Engine, backend: CacheBackend) -> Iterator[Shop]:
    """Tables of their own on ``engine``: ann with orders of 10 and 20, and bob; the cache
    on ``backend``, installed on a sessionmaker. Dropped and closed afterwards."""
    base, user, order = _models(uuid.uuid4().hex[:8])
    base.metadata.create_all(engine)
    factory = sessionmaker(engine)
    with factory.begin() as s:
        s.add_all(
            [
                user(id=1, name="ann", orders=[order(id=1, total=10), order(id=2, total=20)]),
                user(id=2, name="bob"),
            ]
        )
    cache = QueryCache(backend, ttl=60).install(factory)
    try:
        yield Shop(engine, cache, backend, factory, user, order)
    finally:
        _teardown(cache, base, engine, backend)


def _settled(shop: Shop) -> None:
    """Wait for in-flight marks of finished commits to clear (they are cleared off the
    commit's path), so that the next read may store again."""
    shop.cache.flush()


def _get(session: Session, model: Any, pk: int) -> Any:
    obj = session.get(model, pk, options=[cached()])
    assert obj is not None
    return obj


def test_hits_return_equal_objects_attached_to_the_session(shop: Shop):
    user = shop.User
    stmt = select(user).where(user.id == 1).options(cached())
    with shop.Session() as s:
        first = s.execute(stmt).scalar_one()
        expected = (first.id, first.name)
    with shop.Session() as s:
        hit = s.execute(stmt).scalar_one()
        assert (hit.id, hit.name) == expected
        state = inspect(hit)
        assert state.persistent
        assert hit in s
        assert not s.dirty
        assert not state.modified
        assert s.execute(stmt).scalar_one() is hit  # the identity map still rules
        assert [o.total for o in hit.orders] == [10, 20]  # relationships still load
        hit.name = "ann2"  # and a hit object can be changed and flushed
        s.commit()
    stats = shop.cache.stats()
    assert (stats.misses, stats.hits) == (2, 2)  # the user, and its orders' lazy load
    with shop.Session() as s:
        assert s.execute(stmt).scalar_one().name == "ann2"  # the commit invalidated
    assert shop.cache.stats().invalidations[user.__tablename__] == 1


def test_session_get_and_column_selects_are_cached(shop: Shop):
    user = shop.User
    with shop.Session() as s:
        assert _get(s, user, 2).name == "bob"
    with shop.Session() as s:
        assert _get(s, user, 2).name == "bob"
        names = select(user.name, user.id).order_by(user.id).options(cached())
        assert s.execute(names).all() == [("ann", 1), ("bob", 2)]
        assert s.execute(names).all() == [("ann", 1), ("bob", 2)]
    assert shop.cache.stats().hits == 2


def test_rollback_invalidates_nothing_and_stores_nothing(shop: Shop):
    user = shop.User
    stmt = select(user).where(user.id == 1).options(cached())
    with shop.Session() as s:
        s.execute(stmt).scalar_one()
    with shop.Session() as s:
        _get(s, user, 1).name = "dirty"  # pending: the cached read must flush and see it
        assert s.execute(stmt).scalar_one().name == "dirty"
        s.rollback()
    with shop.Session() as s:
        assert s.execute(stmt).scalar_one().name == "ann"  # nothing uncommitted was stored
    stats = shop.cache.stats()
    assert stats.hits == 1
    assert stats.bypasses["dirty_transaction"] == 1
    assert user.__tablename__ not in stats.invalidations


def test_two_entity_join_and_eager_loads_are_invalidated_by_either_table(shop: Shop):
    user, order = shop.User, shop.Order
    join = select(order, user).join(order.user).order_by(order.id).options(cached())
    eager = select(order).options(joinedload(order.user), cached()).order_by(order.id)
    selectin = select(user).options(selectinload(user.orders), cached()).order_by(user.id)

    def read() -> tuple[Any, ...]:
        with shop.Session() as s:
            return (
                [(o.total, u.name) for o, u in s.execute(join)],
                [(o.total, o.user.name) for o in s.execute(eager).scalars()],
                [[o.total for o in u.orders] for u in s.execute(selectin).scalars()],
            )

    assert read() == ([(10, "ann"), (20, "ann")],) * 2 + ([[10, 20], []],)
    assert read() == ([(10, "ann"), (20, "ann")],) * 2 + ([[10, 20], []],)
    # 4 statements (join, eager, selectin parent, selectin children), each hit once
    assert shop.cache.stats().hits == 4
    with shop.Session.begin() as s:
        _get(s, user, 1).name = "amy"  # only the users table
    assert read() == ([(10, "amy"), (20, "amy")],) * 2 + ([[10, 20], []],)
    with shop.Session.begin() as s:
        s.execute(update(order).where(order.id == 2).values(total=25))  # only orders
    assert read() == ([(10, "amy"), (25, "amy")],) * 2 + ([[10, 25], []],)


def test_core_and_text_dml_through_a_session_invalidate(shop: Shop):
    user = shop.User
    stmt = select(user.name).order_by(user.id).options(cached())
    with shop.Session() as s:
        s.execute(stmt).all()
    with shop.Session.begin() as s:
        s.execute(text(f"UPDATE {user.__tablename__} SET name = 'tex' WHERE id = 2"))
    with shop.Session() as s:
        assert s.execute(stmt).scalars().all() == ["ann", "tex"]
    with shop.Session.begin() as s:
        s.connection().exec_driver_sql(f"DELETE FROM {user.__tablename__} WHERE id = 2")
    with shop.Session() as s:
        assert s.execute(stmt).scalars().all() == ["ann"]


def test_options_the_fast_path_does_not_handle_are_still_cached(shop: Shop):
    user = shop.User
    stmt = select(user).options(load_only(user.name), cached()).order_by(user.id)
    for _ in range(2):
        with shop.Session() as s:
            rows = s.execute(stmt).scalars().all()
            assert [u.name for u in rows] == ["ann", "bob"]
            assert "name" in inspect(rows[0]).dict
    assert shop.cache.stats().hits == 1


def test_lazy_loads_of_cached_objects_are_cached(shop: Shop):
    user = shop.User
    stmt = select(user).where(user.id == 1).options(cached())
    for _ in range(2):
        with shop.Session() as s:
            assert [o.total for o in s.execute(stmt).scalar_one().orders] == [10, 20]
    assert shop.cache.stats().hits == 2  # the user and its orders' lazy load


def test_a_miss_runs_once_and_returns_what_an_uncached_query_returns(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
):
    """A fast-path select's miss runs the query once, on the session's connection, and
    builds its result from the rows as a hit does (not through the ORM's loading step):
    the same rows as an uncached query, objects persistent in the session, the missing
    side of an outer join ``None``, relationships loading."""
    user, order = shop.User, shop.Order
    join = select(user, order).outerjoin(user.orders).order_by(user.id, order.id)
    columns = select(user.name, order.total).join(user.orders).order_by(order.id)
    loads = []
    real = orm_loading.instances

    def counted(cursor: Any, context: Any) -> Any:
        loads.append(context)
        return real(cursor, context)

    monkeypatch.setattr(orm_loading, "instances", counted)
    with Session(shop.engine) as s:  # no cache on this one
        expected_join = [(u.name, o and o.total) for u, o in s.execute(join)]
        expected_columns = s.execute(columns).all()
    assert len(loads) == 2
    executed: list[str] = []

    def on_execute(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        executed.append(sql)

    event.listen(shop.engine, "before_cursor_execute", on_execute)
    try:
        for attempt in ("miss", "hit"):
            with shop.Session() as s:
                got = s.execute(join.options(cached())).all()
                assert [(u.name, o and o.total) for u, o in got] == expected_join
                ann, first = got[0]
                assert ann in s
                assert inspect(ann).persistent
                assert inspect(first).persistent
                assert got[1][0] is ann  # one object per identity
                assert got[2][1] is None  # bob has no orders
                assert first.user is ann  # resolved from the identity map
                assert not s.dirty
                assert s.execute(columns.options(cached())).all() == expected_columns
            assert len(executed) == 2, attempt  # each statement ran once, on the miss
    finally:
        event.remove(shop.engine, "before_cursor_execute", on_execute)
    assert len(loads) == 2  # the ORM's loading step ran for neither miss nor hit
    stats = shop.cache.stats()
    assert (stats.misses, stats.hits) == (2, 2)


def test_a_statement_run_again_reads_its_bound_values_again(shop: Shop):
    """A statement object's plan is remembered, its bound values are not: a value given
    by a callable is read at each execution, and keys the entry it reads."""
    user = shop.User
    current = {"uid": 1}
    stmt = select(user.name).where(user.id == bindparam("uid", callable_=lambda: current["uid"]))
    stmt = stmt.options(cached())
    names = []
    for uid in (1, 2, 1, 2):
        current["uid"] = uid
        with shop.Session() as s:
            names.append(s.execute(stmt).scalar_one())
    assert names == ["ann", "bob", "ann", "bob"]
    stats = shop.cache.stats()
    assert (stats.misses, stats.hits) == (2, 2)


def test_sessions_that_used_the_cache_leave_no_reference_cycles(shop: Shop):
    """Sessions that missed and hit are freed by reference counting: nothing the cache
    keeps on a session leads back to it (a cycle would leave every request's session,
    transaction and connection to the garbage collector, which then runs far more often)."""
    user = shop.User
    stmt = select(user.name).where(user.id == bindparam("uid")).options(cached())
    routing = sessionmaker(class_=RoutingSession, primary=shop.engine)
    shop.cache.install(routing)
    with cyclic_garbage() as garbage:
        for factory in (shop.Session, routing):
            for uid in (1, 1, 2):  # a miss, a hit, a miss
                with factory() as s:
                    assert s.execute(stmt, {"uid": uid}).scalar_one() in ("ann", "bob")
    assert [o for o in garbage if isinstance(o, Session)] == []
    del garbage
    stats = shop.cache.stats()
    assert (stats.misses, stats.hits) == (2, 4)  # the routing sessions hit what the first stored


def test_a_do_orm_execute_hook_after_the_caches_sees_a_miss(shop: Shop):
    """A hook installed after the cache's still runs for a miss, through the ORM's
    pipeline, and may change the statement; the result is what it made."""
    user = shop.User
    seen: list[Any] = []

    def later_hook(state: Any) -> None:
        seen.append(state.parameters)
        state.statement = state.statement.where(user.id == 2)

    hooked = sessionmaker(shop.engine)
    shop.cache.install(hooked)
    event.listen(hooked, "do_orm_execute", later_hook)
    stmt = select(user.name).where(user.id >= bindparam("low")).options(cached())
    with hooked() as s:
        assert s.execute(stmt, {"low": 1}).all() == [("bob",)]
    assert seen == [{"low": 1}]
    assert shop.cache.stats().misses == 1


def test_table_column_selects_hit_without_a_connection_and_match_the_query(shop: Shop):
    """Selects of ``Table`` columns and expressions (no entity) run by a session take the
    fast path: a hit opens no connection and runs no statement, and its keys, rows and
    value types are those of the query itself."""
    users, orders = shop.User.__table__, shop.Order.__table__
    statements = [
        select(users.c.name).where(users.c.id == 1),
        # two columns named "id": the keys stay the query's
        select(users.c.id, orders.c.id, orders.c.total)
        .join_from(users, orders)
        .order_by(orders.c.id),
        # labels, aggregates (PostgreSQL's SUM is a Decimal), an outer join's NULLs
        select(
            users.c.name.label("who"),
            func.count(orders.c.id).label("n"),
            func.sum(orders.c.total).label("spent"),
        )
        .join_from(users, orders, isouter=True)
        .group_by(users.c.name)
        .order_by(users.c.name),
    ]

    def run(s: Session, stmt: Any) -> tuple[list[str], list[tuple[Any, ...]], list[str]]:
        result = s.execute(stmt)
        rows = [tuple(r) for r in result]
        return list(result.keys()), rows, [type(v).__name__ for row in rows for v in row]

    with shop.Session() as s:
        expected = [run(s, stmt) for stmt in statements]
    assert expected[2][1][1][1:] == (0, None)  # bob: no orders
    with shop.Session() as s:
        assert [run(s, stmt.options(cached())) for stmt in statements] == expected  # fills
    statements_run: list[str] = []
    event.listen(shop.engine, "before_cursor_execute", lambda *a: statements_run.append(a[2]))
    with shop.Session() as s:
        assert [run(s, stmt.options(cached())) for stmt in statements] == expected
        assert s.get_transaction() is None  # no connection was opened
    assert statements_run == []
    stats = shop.cache.stats()
    assert (stats.misses, stats.hits) == (3, 3)


class _CountingCodec(PayloadCodec):
    """The cache's codec, counting the payloads it decodes."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded = 0

    def decode(self, value: bytes) -> Any:
        self.decoded += 1
        return super().decode(value)


def test_hits_decode_an_entry_once_unless_its_values_can_change(shop: Shop):
    """A hit meeting an entry it has decoded before reuses its rows when every value
    is immutable; rows holding a mutable value (a JSON document) are decoded again for
    every hit, so that changing one result never changes the next, and so is an entry
    over 8 KiB (not kept in memory twice)."""
    table = Table(
        f"docs_{uuid.uuid4().hex[:8]}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("doc", JSON),
        Column("at", DateTime),
        Column("label", String(60)),
    )
    table.create(shop.engine)
    try:
        with shop.engine.begin() as conn:
            conn.execute(table.insert(), [{"id": 1, "doc": {"tags": ["a"]}, "at": _AT}])
            conn.execute(table.insert(), [{"id": i, "label": f"{i:060d}"} for i in range(2, 302)])
        _settled(shop)
        codec = shop.cache._codec = _CountingCodec()
        plain = select(table.c.id, table.c.at).where(table.c.id == 1).options(cached())
        mutable = select(table.c.doc).where(table.c.id == 1).options(cached())
        large = select(table.c.id, table.c.label).where(table.c.id > 1).options(cached())
        for stmt in (plain, mutable, large):
            with shop.Session() as s:
                s.execute(stmt).all()  # fills
        assert codec.decoded == 0
        for _ in range(3):
            with shop.Session() as s:
                assert s.execute(plain).all() == [(1, _AT)]
        assert codec.decoded == 1  # the first hit decoded; the others reused its rows
        with shop.Session() as s:
            first = s.execute(mutable).scalar_one()
            first["tags"].append("changed by the caller")
        with shop.Session() as s:
            assert s.execute(mutable).scalar_one() == {"tags": ["a"]}
        assert codec.decoded == 3
        for _ in range(2):
            with shop.Session() as s:
                assert len(s.execute(large).all()) == 300  # 300 labels of 60 characters
        assert codec.decoded == 5
        assert shop.cache.stats().hits == 7
    finally:
        table.drop(shop.engine)


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    """Every statement sent to ``engine`` in the block."""
    seen: list[str] = []

    def before(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_answer_locally_answers_memory_hits_and_never_does_io(shop: Shop):
    """``answer_locally`` returns what ``execute`` would for a hit held in process memory
    (MemoryBackend), and ``None`` for anything else (a miss, Redis, a dirty session, an
    uncached statement), without a statement, a flush or a transaction."""
    user = shop.User
    stmt = select(user.name, user.id).where(user.id == 1).options(cached())
    local = isinstance(shop.backend, MemoryBackend)
    with _statements(shop.engine) as seen, shop.Session() as s:
        assert shop.cache.answer_locally(s, stmt) is None  # nothing stored yet
        assert s.get_transaction() is None
    assert seen == []
    with shop.Session() as s:
        expected = s.execute(stmt).all()  # the fill
    with _statements(shop.engine) as seen, shop.Session() as s:
        result = shop.cache.answer_locally(s, stmt)
        if local:
            assert result is not None
            assert result.all() == expected
            assert shop.cache.stats().hits == 1
        else:
            assert result is None  # an entry in Redis needs a round trip
            assert shop.cache.stats().hits == 0
        assert s.get_transaction() is None  # no connection was asked for
        # Pending changes would be flushed before the query: not answered, not flushed
        # (no statement reaches the engine, below).
        s.add(user(id=3, name="cy"))
        assert shop.cache.answer_locally(s, stmt) is None
        assert s.new
        s.expunge_all()
        # A statement without cached() would run: not answered.
        assert shop.cache.answer_locally(s, select(user.name).where(user.id == 1)) is None
    assert seen == []
    with shop.Session() as s, pytest.raises(ConfigurationError, match="install"):
        shop.cache.answer_locally(Session(shop.engine), stmt)


@pytest.mark.parametrize("shop", ["sqlite+memory"], indirect=True)  # answered from memory
def test_answer_locally_matches_execute_with_parameters_and_other_hooks(shop: Shop):
    """``answer_locally`` finds the entry ``execute`` stored for the same statement and
    parameters (and not another's), and a ``do_orm_execute`` hook that runs before the
    cache's still runs, as for ``execute`` (it might change the statement)."""
    user = shop.User
    stmt = select(user.name).where(user.id == bindparam("uid")).options(cached())
    with shop.Session() as s:
        assert s.execute(stmt, {"uid": 1}).all() == [("ann",)]  # the fill
    with shop.Session() as s:
        found = shop.cache.answer_locally(s, stmt, {"uid": 1})
        assert found is not None
        assert found.all() == [("ann",)]
        assert shop.cache.answer_locally(s, stmt, {"uid": 2}) is None  # not stored
    seen: list[Any] = []

    def earlier_hook(state: Any) -> None:
        seen.append(state.parameters)

    hooked = sessionmaker(shop.engine)
    event.listen(hooked, "do_orm_execute", earlier_hook)
    shop.cache.install(hooked)
    with hooked() as s:
        found = shop.cache.answer_locally(s, stmt, {"uid": 1})
        assert found is not None
        assert found.all() == [("ann",)]
        assert s.get_transaction() is None
    assert seen == [{"uid": 1}]
    assert shop.cache.stats().hits == 2


def test_answer_locally_reads_a_layered_backends_memory_level(
    postgres_url: str, redis_url: str, make_engine: MakeEngine
):
    engine = make_engine(postgres_url)
    base, user, _ = _models(uuid.uuid4().hex[:8])
    base.metadata.create_all(engine)
    factory = sessionmaker(engine)
    with factory.begin() as s:
        s.add(user(id=1, name="ann"))
    remote = RedisBackend(redis_url, namespace=f"sqlperf-test-{uuid.uuid4().hex[:8]}")
    backend = LayeredBackend(remote)
    cache = QueryCache(backend, ttl=60).install(factory)
    stmt = select(user).where(user.id == 1).options(cached())
    # L1 takes copies only once its invalidation subscription is confirmed, which its
    # thread does on its own time: without this wait the copies below may be skipped.
    wait_until(lambda: backend.local_usable, "the subscription is confirmed")
    try:
        with factory() as s:
            s.execute(stmt).scalar_one()  # stored in Redis (and in L1)
        backend.local.clear()  # as in another process: the entry is in Redis only
        with factory() as s:
            assert cache.answer_locally(s, stmt) is None  # only in Redis so far
            s.execute(stmt).scalar_one()  # a Redis hit, copied into the memory level
        with _statements(engine) as seen, factory() as s:
            result = cache.answer_locally(s, stmt)
            assert result is not None
            hit = result.scalar_one()
            assert (hit.id, hit.name) == (1, "ann")
            assert hit in s
        assert seen == []
        with factory.begin() as s:  # a commit invalidates the memory level too
            s.execute(update(user).where(user.id == 1).values(name="ann2"))
        with factory() as s:
            assert cache.answer_locally(s, stmt) is None
    finally:
        _teardown(cache, base, engine, backend)


def test_cache_all_and_no_cache(shop: Shop):
    user = shop.User
    shop.cache.cache_all = True
    for _ in range(2):
        with shop.Session() as s:
            s.execute(select(user).order_by(user.id)).scalars().all()
            s.execute(select(user).order_by(user.id).options(no_cache())).scalars().all()
            s.execute(select(user).with_for_update().where(user.id == 1)).scalar_one()
            s.rollback()
    stats = shop.cache.stats()
    assert stats.hits == 1  # only the plain select: not no_cache(), never FOR UPDATE
    assert stats.bypasses.get("uncacheable", 0) == 2


@pytest.fixture
def one_connection_shop(request: pytest.FixtureRequest, make_engine: MakeEngine) -> Iterator[Shop]:
    """The shop on a server (``request.param``: ``"postgresql"`` or ``"mysql"``, or
    ``("postgresql", isolation_level)``) with a pool of one connection, so that every
    checkout gets the connection the one before it returned; the cache in memory."""
    db, level = (request.param, None) if isinstance(request.param, str) else request.param
    engine = make_engine(
        require(db), pool_size=1, max_overflow=0, **({"isolation_level": level} if level else {})
    )
    with _open_shop(engine, MemoryBackend()) as shop:
        yield shop


def _driver_autocommit(conn: Connection) -> bool:
    """The DB-API connection's own ``autocommit`` flag (psycopg2)."""
    dbapi_connection: Any = conn.connection.dbapi_connection
    return bool(dbapi_connection.autocommit)


@contextmanager
def _in_transaction_when_run(engine: Engine) -> Iterator[list[bool]]:
    """Whether each statement run on ``engine`` ran inside a transaction, as the
    driver says just after it ran (PostgreSQL)."""
    seen: list[bool] = []

    def after(conn: Any, *rest: Any) -> None:
        status = conn.connection.dbapi_connection.info.transaction_status
        seen.append(status != 0)  # 0: idle, no transaction open on the server

    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "after_cursor_execute", after)


@pytest.mark.parametrize("one_connection_shop", ["postgresql"], indirect=True)
def test_a_miss_of_a_session_without_a_transaction_reads_in_autocommit(
    one_connection_shop: Shop,
):
    """On psycopg2, a miss of a session that has no transaction yet runs in autocommit
    on a connection of its own (no BEGIN, and no ROLLBACK when the session ends: two
    round trips fewer) and leaves the session without a transaction. It is stored as
    any miss is, and the pooled connection leaves autocommit again: a later
    transaction on it still rolls back."""
    shop = one_connection_shop
    user = shop.User
    stmt = select(user.name).where(user.id == bindparam("uid")).options(cached())
    routing = sessionmaker(class_=RoutingSession, primary=shop.engine)
    shop.cache.install(routing)
    with _in_transaction_when_run(shop.engine) as in_transaction:
        for factory, uid in ((shop.Session, 1), (routing, 2)):
            with factory() as s:
                assert s.execute(stmt, {"uid": uid}).scalar_one() in ("ann", "bob")
                assert s.get_transaction() is None
                assert shop.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert in_transaction == [False, False]
    with shop.Session() as s:
        assert s.execute(stmt, {"uid": 1}).scalar_one() == "ann"  # a hit of what was stored
    stats = shop.cache.stats()
    assert (stats.misses, stats.stores, stats.hits) == (2, 2, 1)
    with shop.engine.connect() as conn:
        assert not _driver_autocommit(conn)
        conn.execute(update(user).where(user.id == 1).values(name="gone"))
        conn.rollback()
    with Session(shop.engine) as s:
        assert s.execute(select(user.name).where(user.id == 1)).scalar_one() == "ann"


@pytest.mark.parametrize("one_connection_shop", ["postgresql"], indirect=True)
def test_the_first_query_of_a_new_engine_may_be_a_miss(
    one_connection_shop: Shop, make_engine: MakeEngine
):
    """An engine that has not connected yet does not know its isolation level: its
    first miss runs in the session's transaction, and later ones in autocommit."""
    user = one_connection_shop.User
    engine = make_engine(require("postgresql"))
    factory = sessionmaker(engine)
    cache = QueryCache(MemoryBackend()).install(factory)
    stmt = select(user.name).where(user.id == bindparam("uid")).options(cached())
    try:
        for uid, transaction in ((1, True), (2, False)):
            with factory() as s:
                assert s.execute(stmt, {"uid": uid}).scalar_one() in ("ann", "bob")
                assert (s.get_transaction() is not None) is transaction
    finally:
        cache.close()
    assert cache.stats().stores == 2


@pytest.mark.parametrize("one_connection_shop", ["postgresql"], indirect=True)
def test_a_failed_autocommit_miss_leaves_the_connection_out_of_autocommit(
    one_connection_shop: Shop,
):
    """A miss read in autocommit that fails raises the database's error, and the pooled
    connection goes back out of autocommit."""
    shop = one_connection_shop
    user = shop.User
    broken = select(user.name).where(user.id == cast(literal("not a number"), Integer))
    broken = broken.options(cached())
    with shop.Session() as s, pytest.raises(DBAPIError, match="invalid input syntax"):
        s.execute(broken).all()
    with shop.engine.connect() as conn:
        assert not _driver_autocommit(conn)


@pytest.mark.parametrize(
    "one_connection_shop",
    [("postgresql", "REPEATABLE READ"), "postgresql", "mysql"],
    indirect=True,
    ids=["postgresql-repeatable-read", "postgresql-in-a-transaction", "mysql"],
)
def test_a_miss_runs_in_the_sessions_transaction_when_it_must(
    one_connection_shop: Shop, request: pytest.FixtureRequest
):
    """A miss begins (or joins) the session's transaction: when the session is in one
    already, under a snapshot isolation level (the transaction's later reads must see
    its first read's snapshot), and on drivers whose autocommit switch is a round
    trip itself (MySQL)."""
    shop = one_connection_shop
    user = shop.User
    stmt = select(user.name).where(user.id == 1).options(cached())
    case = request.node.callspec.id
    with shop.Session() as s:
        if case == "postgresql-in-a-transaction":
            assert s.execute(select(user.id).where(user.id == 2)).scalar_one() == 2
        txn = s.get_transaction()
        assert s.execute(stmt).scalar_one() == "ann"
        assert s.get_transaction() is not None
        if txn is not None:
            assert s.get_transaction() is txn
        assert shop.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    stats = shop.cache.stats()
    assert (stats.misses, stats.stores) == (1, 1)


# Servers only: pysqlite would serialise the threads, so no misses would overlap.
@pytest.mark.parametrize("shop", ["postgresql+redis", "mysql+redis"], indirect=True)
def test_concurrent_misses_run_the_query_once(shop: Shop):
    user = shop.User
    sleep = "pg_sleep" if shop.engine.dialect.name == "postgresql" else "sleep"
    stmt = select(user.name, getattr(func, sleep)(0.3)).where(user.id == 1).options(cached())
    ran = []

    def count(*args: Any) -> None:  # after_cursor_execute(conn, cursor, sql, params, context, many)
        statement, context = args[2], args[4]
        if cache_outcome(context) == "miss":  # hits pass through this event too
            ran.append(statement)

    event.listen(shop.engine, "after_cursor_execute", count)
    barrier = threading.Barrier(6)

    def read() -> None:
        barrier.wait()
        with shop.engine.connect() as conn:
            assert conn.execute(stmt).all()[0][0] == "ann"

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    event.remove(shop.engine, "after_cursor_execute", count)
    stats = shop.cache.stats()
    assert len(ran) == 1, "the query ran more than once"
    assert stats.flight_waits == 5
    assert stats.hits == 5


def test_install_and_uninstall(shop: Shop):
    user = shop.User
    stmt = select(user).where(user.id == 1).options(cached())
    shop.cache.uninstall(shop.Session)
    for _ in range(2):
        with shop.Session() as s:
            s.execute(stmt).scalar_one()
    hits = shop.cache.stats().hits  # the engine stays attached: the general path serves
    assert hits == 1
    shop.cache.detach()
    with shop.Session() as s:
        s.execute(stmt).scalar_one()
    assert shop.cache.stats().hits == hits  # nothing listens any more
    with pytest.raises(ConfigurationError, match="every Session"):
        shop.cache.install(Session)
    with pytest.raises(ConfigurationError, match="sessionmaker"):
        shop.cache.install(shop.engine)  # type: ignore[arg-type]


def test_repeatable_read_stores_only_a_transactions_first_read(
    mysql_url: str, redis_url: str, make_engine: MakeEngine
):
    engine = make_engine(mysql_url)  # MariaDB's default: REPEATABLE READ
    base, user, _ = _models(uuid.uuid4().hex[:8])
    base.metadata.create_all(engine)
    backend = RedisBackend(redis_url, namespace=f"sqlperf-test-{uuid.uuid4().hex[:8]}")
    factory = sessionmaker(engine)
    cache = QueryCache(backend).install(factory)
    try:
        with factory.begin() as s:
            s.add_all([user(id=1, name="ann"), user(id=2, name="bob")])
        cache.flush()
        one, two = (select(user).where(user.id == i).options(cached()) for i in (1, 2))
        with factory() as s:
            s.execute(one).scalar_one()  # opens the snapshot: may store
            s.execute(two).scalar_one()  # reads that older snapshot: must not
        assert cache.stats().stores == 1
        assert cache.stats().bypasses["snapshot"] == 1
    finally:
        _teardown(cache, base, engine, backend)


def test_one_cache_per_engine(shop: Shop):
    with pytest.raises(ConfigurationError, match="already attached"):
        QueryCache(MemoryBackend()).attach(shop.engine)


def test_routing_session_fills_from_the_primary_never_from_a_replica(
    postgres_url: str, replica_url: str, redis_url: str, make_engine: MakeEngine
):
    primary, replica = make_engine(postgres_url), make_engine(replica_url)
    base, user, _ = _models(uuid.uuid4().hex[:8])
    base.metadata.create_all(primary)
    backend = RedisBackend(redis_url, namespace=f"sqlperf-test-{uuid.uuid4().hex[:8]}")
    factory = sessionmaker(class_=RoutingSession, primary=primary, replicas=[replica])
    cache = QueryCache(backend).install(factory)
    try:
        with factory.begin() as s:
            s.add(user(id=1, name="ann"))
        cache.flush()
        before = routing_stats(replica).reads
        stmt = select(user).where(user.id == 1).options(cached())
        for _ in range(3):
            with factory() as s:
                assert s.execute(stmt).scalar_one().name == "ann"
        assert routing_stats(replica).reads == before  # misses went to the primary
        assert cache.stats().hits == 2
        forced = stmt.execution_options(sqlperf_route="replica").where(user.name == "ann")
        with factory() as s:
            s.execute(forced).scalar_one()  # the caller insisted on a replica: not stored
        assert cache.stats().bypasses["replica_read"] == 1
    finally:
        _teardown(cache, base, primary, backend)


def test_cross_process_lock_fills_once(postgres_url: str, redis_url: str, make_engine: MakeEngine):
    # Two caches with their own single flight stand for two processes sharing Redis.
    ns = f"sqlperf-test-{uuid.uuid4().hex[:8]}"
    engines = [make_engine(postgres_url), make_engine(postgres_url)]
    base, user, _ = _models(uuid.uuid4().hex[:8])
    base.metadata.create_all(engines[0])
    with Session(engines[0]) as s, s.begin():
        s.add(user(id=1, name="ann"))
    backends = [RedisBackend(redis_url, namespace=ns) for _ in engines]
    caches = [QueryCache(b, lock_s=5).attach(e) for b, e in zip(backends, engines, strict=True)]
    ran = []

    def count(*args: Any) -> None:  # after_cursor_execute(conn, cursor, sql, params, context, many)
        statement, context = args[2], args[4]
        if cache_outcome(context) == "miss":
            ran.append(statement)

    for e in engines:
        event.listen(e, "after_cursor_execute", count)
    stmt = select(user.name, func.pg_sleep(0.3)).options(cached())
    barrier = threading.Barrier(2)

    def read(engine: Engine) -> None:
        barrier.wait()
        with engine.connect() as conn:
            assert conn.execute(stmt).all()[0][0] == "ann"

    try:
        threads = [threading.Thread(target=read, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(ran) == 1
        assert sum(c.stats().hits for c in caches) == 1
    finally:
        for c in caches:
            c.close()
        base.metadata.drop_all(engines[0])
        backends[0].clear()
        for b in backends:
            b.close()
