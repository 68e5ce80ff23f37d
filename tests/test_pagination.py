"""keyset_page and iter_keyset: orderings, typed cursors, errors, totals, routing and the cache.

The random walks over random tables and orderings are in test_pagination_property.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Uuid,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sqlperf import InvalidCursor, PaginationError, RoutingSession, engine_role
from sqlperf.cache import MemoryBackend, QueryCache, cached
from sqlperf.pagination import Page, encode_cursor, iter_keyset, keyset_page
from tests.keyset_walks import backward_pages, forward_pages

MakeEngine = Callable[..., Engine]


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def walk_forward(target: Any, stmt: Any, per_page: int, **kw: Any) -> list[Any]:
    return [item for page in forward_pages(target, stmt, per_page, **kw) for item in page.items]


def walk_backward(target: Any, stmt: Any, per_page: int, **kw: Any) -> list[Any]:
    pages = reversed(backward_pages(target, stmt, per_page, **kw))
    return [item for page in pages for item in page.items]


@pytest.fixture
def statements(any_url: str, make_engine: MakeEngine) -> Iterator[tuple[Engine, list[str]]]:
    """An engine on each dialect and the SQL of every statement it runs."""
    engine = make_engine(any_url)
    sent: list[str] = []

    def log(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        # SQLite's dialect always renders OFFSET after LIMIT; an OFFSET of 0 skips nothing.
        if "OFFSET" in statement and parameters[-1] == 0:
            statement = statement.replace("OFFSET ?", "")
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", log)
    yield engine, sent
    event.remove(engine, "before_cursor_execute", log)


# -- a shop on every dialect ---------------------------------------------------------------


class Shop:
    """Customers and orders, ORM-mapped, on one engine; tables dropped afterwards."""

    def __init__(self, engine: Engine) -> None:
        suffix = _suffix()

        class Base(DeclarativeBase):
            pass

        class Customer(Base):
            __tablename__ = f"kp_customer_{suffix}"
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            name: Mapped[str | None] = mapped_column(String(20))

        class Order(Base):
            __tablename__ = f"kp_order_{suffix}"
            id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
            created_at: Mapped[dt.datetime] = mapped_column(DateTime)
            total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
            note: Mapped[str | None] = mapped_column(String(20))
            customer_id: Mapped[int] = mapped_column(ForeignKey(Customer.id))
            customer: Mapped[Customer] = relationship()

        self.engine, self.Base, self.Customer, self.Order = engine, Base, Customer, Order
        Base.metadata.create_all(engine)
        start = dt.datetime(2024, 3, 1, 12, 0, 0)
        with Session(engine) as s:
            s.add_all([Customer(id=i, name=[None, "ann", "bob"][i % 3]) for i in range(1, 7)])
            s.flush()
            s.add_all(
                [
                    Order(
                        id=i,
                        created_at=start + dt.timedelta(hours=i % 9),  # many ties
                        total=Decimal(i % 7) + Decimal("0.25"),
                        note=None if i % 4 == 0 else f"n{i % 5}",
                        customer_id=1 + i % 6,
                    )
                    for i in range(1, 121)
                ]
            )
            s.commit()

    def drop(self) -> None:
        self.Base.metadata.drop_all(self.engine)


@pytest.fixture
def shop(any_url: str, make_engine: MakeEngine) -> Iterator[Shop]:
    shop = Shop(make_engine(any_url))
    yield shop
    shop.drop()


def _expected(shop: Shop, key: Callable[[Any], Any]) -> list[int]:
    with Session(shop.engine) as s:
        orders = s.scalars(select(shop.Order)).all()
        return [o.id for o in sorted(orders, key=key)]


def test_orders_by_created_at_desc_id_desc_both_ways(shop: Shop):
    Order = shop.Order
    stmt = select(Order).order_by(Order.created_at.desc(), Order.id.desc())
    expected = _expected(shop, lambda o: (-o.created_at.timestamp(), -o.id))
    with Session(shop.engine) as s:
        first = keyset_page(s, stmt, 25)
        assert [o.id for o in first.items] == expected[:25]
        assert (first.has_prev, first.prev_cursor, first.has_next) == (False, None, True)
        assert [o.id for o in walk_forward(s, stmt, 25)] == expected
        assert [o.id for o in walk_backward(s, stmt, 25)] == expected
        assert [o.id for o in iter_keyset(s, stmt, 17)] == expected
        second = keyset_page(s, stmt, 25, after=first.next_cursor)
        back = keyset_page(s, stmt, 25, before=second.prev_cursor)
        assert [o.id for o in back.items] == expected[:25]
        assert (back.has_prev, back.has_next) == (False, True)
        final = keyset_page(s, stmt, 25, last=True)
        assert [o.id for o in final.items] == expected[-25:]
        assert (final.has_next, final.next_cursor, final.has_prev) == (False, None, True)


def test_the_primary_key_is_appended_to_a_non_unique_ordering(shop: Shop):
    Order = shop.Order
    stmt = select(Order).order_by(Order.created_at)  # nine distinct values for 120 rows
    expected = _expected(shop, lambda o: (o.created_at, o.id))
    with Session(shop.engine) as s:
        assert [o.id for o in walk_forward(s, stmt, 7)] == expected
        assert [o.id for o in walk_backward(s, stmt, 7)] == expected


def test_nullable_columns_with_default_and_explicit_null_placement(shop: Shop):
    Order = shop.Order
    nulls_large = shop.engine.dialect.name == "postgresql"

    cases = [
        # (ORDER BY, whether NULLs come last, descending)
        (Order.note.nulls_first(), False, False),
        (Order.note.nulls_last(), True, False),
        (Order.note.desc().nulls_last(), True, True),
        (Order.note.desc().nulls_first(), False, True),
        (Order.note, nulls_large, False),
        (Order.note.desc(), not nulls_large, True),
    ]
    with Session(shop.engine) as s:
        for clause, nulls_last, desc in cases:
            stmt = select(Order).order_by(clause, Order.id)
            rows = s.scalars(select(Order)).all()
            non_null = sorted({o.note for o in rows if o.note is not None}, reverse=desc)
            rank = {v: i for i, v in enumerate(non_null)}
            nulls_rank = len(non_null) if nulls_last else -1
            expected = [
                o.id
                for o in sorted(
                    rows, key=lambda o: (nulls_rank if o.note is None else rank[o.note], o.id)
                )
            ]
            assert [o.id for o in walk_forward(s, stmt, 9)] == expected, clause
            assert [o.id for o in walk_backward(s, stmt, 9)] == expected, clause


def test_labelled_expressions_and_joined_entity_columns(shop: Shop):
    Order, Customer = shop.Order, shop.Customer
    bucket = (Order.id % 5).label("bucket")
    stmt = select(Order).add_columns(bucket).order_by(bucket.desc(), Order.id)
    with Session(shop.engine) as s:
        got = [(o.id, b) for o, b in walk_forward(s, stmt, 11)]
        assert got == sorted(((i, i % 5) for i in range(1, 121)), key=lambda t: (-t[1], t[0]))
        by_name = select(Order).join(Order.customer).order_by(Customer.name.nulls_last(), Order.id)
        names = {c.id: c.name for c in s.scalars(select(Customer))}
        orders = s.scalars(select(Order)).all()
        expected = [
            o.id
            for o in sorted(
                orders,
                key=lambda o: (names[o.customer_id] is None, names[o.customer_id] or "", o.id),
            )
        ]
        assert [o.id for o in walk_forward(s, by_name, 13)] == expected
        assert [o.id for o in walk_backward(s, by_name, 13)] == expected
        textual = select(Order.id, bucket).order_by(text("bucket"), Order.id)
        rows = walk_forward(s, textual, 50)
        assert [tuple(r) for r in rows] == sorted(
            ((i, i % 5) for i in range(1, 121)), key=lambda t: (t[1], t[0])
        )


def test_core_rows_keep_only_the_statements_columns(shop: Shop):
    table = shop.Order.__table__
    stmt = select(table.c.id, table.c.note).order_by(table.c.created_at.desc(), table.c.id)
    with shop.engine.connect() as conn:
        page = keyset_page(conn, stmt, 5)
    assert all(row._fields == ("id", "note") for row in page.items)
    with shop.engine.connect() as conn:
        assert len(walk_forward(conn, stmt, 40)) == 120
    assert len(walk_forward(shop.engine, stmt, 40)) == 120  # an Engine works for Core


def test_selected_order_by_columns_are_read_where_they_are_not_selected_again(shop: Shop):
    """When the statement selects its ORDER BY columns (ORM attributes, annotated anew in
    every statement, or table columns), a page reads the cursor's values from them and
    adds no key columns to the SQL; an ORDER BY column it does not select is added."""
    Order = shop.Order
    table = Order.__table__
    sent: list[str] = []

    def log(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        sent.append(statement)

    event.listen(shop.engine, "before_cursor_execute", log)
    try:
        with Session(shop.engine) as s:
            orm = select(Order.id, Order.created_at).order_by(Order.created_at.desc(), Order.id)
            first = keyset_page(s, orm, 7)
            second = keyset_page(s, orm, 7, after=first.next_cursor)
            core = select(table.c.id, table.c.created_at).order_by(table.c.created_at.desc())
            keyset_page(s, core, 7)
            unselected = select(Order.id).order_by(Order.total, Order.id)
            keyset_page(s, unselected, 7)
    finally:
        event.remove(shop.engine, "before_cursor_execute", log)
    assert [r.id for r in first.items + second.items] == _expected(
        shop, lambda o: (-o.created_at.timestamp(), o.id)
    )[:14]
    assert ["_sqlperf_key_" in sql for sql in sent] == [False, False, False, True]


def test_row_values_where_the_index_reads_them_and_the_expanded_form_elsewhere(
    statements: tuple[Engine, list[str]],
):
    engine, sent = statements
    metadata = MetaData()
    t = Table(
        f"kp_forms_{_suffix()}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("a", Integer, nullable=False),
        Column("b", Integer, nullable=True),
    )
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(t), [{"id": i, "a": i % 3, "b": i % 4 or None} for i in range(30)])
        with engine.connect() as conn:
            sent.clear()
            assert len(walk_forward(conn, select(t).order_by(t.c.a, t.c.id), 8)) == 30
            same_way = [s for s in sent if t.name in s]
            sent.clear()
            assert len(walk_forward(conn, select(t).order_by(t.c.a, t.c.id.desc()), 8)) == 30
            mixed = [s for s in sent if t.name in s]
            sent.clear()
            assert len(walk_forward(conn, select(t).order_by(t.c.b, t.c.id), 8)) == 30
            nullable = [s for s in sent if t.name in s]
    finally:
        metadata.drop_all(engine)
    row_values = engine.dialect.name in ("postgresql", "sqlite")
    assert any(f"({t.name}.a, {t.name}.id) >" in s for s in same_way) == row_values
    assert not any(f"({t.name}.a, {t.name}.id)" in s for s in mixed)
    assert any(" OR " in s for s in mixed)
    assert any("IS NULL" in s for s in nullable)  # NULLs need the expanded form
    for s in same_way + mixed + nullable:
        assert "OFFSET" not in s.upper()
        assert "LIMIT" in s.upper()


# -- cursor values of every type ----------------------------------------------------------


def test_cursors_carry_typed_values_through_the_database(any_url: str, make_engine: MakeEngine):
    engine = make_engine(any_url)
    tz_aware = engine.dialect.name == "postgresql"  # the only one of the three that keeps it
    metadata = MetaData()
    t = Table(
        f"kp_types_{_suffix()}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("when", DateTime(timezone=tz_aware)),
        Column("day", Date),
        Column("amount", Numeric(12, 4)),
        Column("flag", Boolean),
        Column("ref", Uuid),
        Column("label", String(20)),
    )
    metadata.create_all(engine)
    tz = dt.timezone(dt.timedelta(hours=5, minutes=45)) if tz_aware else None
    rows = [
        {
            "id": i,
            "when": dt.datetime(2024, 1, 1 + i % 3, 10, i % 2, tzinfo=tz),
            "day": dt.date(2023, 12, 1 + i % 4),
            "amount": Decimal(i % 5) / 4,
            "flag": bool(i % 2),
            "ref": uuid.UUID(int=(i * 7919) % 13),
            "label": "ü" * (i % 3) + "x",
        }
        for i in range(40)
    ]
    try:
        with engine.begin() as conn:
            conn.execute(insert(t), rows)
        for column in ("when", "day", "amount", "flag", "ref", "label"):
            c = t.c[column]
            for clause in (c.asc(), c.desc()):
                stmt = select(t.c.id).order_by(clause, t.c.id)
                with engine.connect() as conn:
                    expected = [r.id for r in conn.execute(stmt)]
                    assert [r.id for r in walk_forward(conn, stmt, 6)] == expected, clause
                    assert [r.id for r in walk_backward(conn, stmt, 6)] == expected, clause
    finally:
        metadata.drop_all(engine)


# -- bad input ------------------------------------------------------------------------------


@pytest.fixture
def orders(sqlite_file_url: str, make_engine: MakeEngine) -> Iterator[Shop]:
    shop = Shop(make_engine(sqlite_file_url))
    yield shop
    shop.drop()


def test_tampered_truncated_and_foreign_cursors_are_invalid(orders: Shop):
    Order = orders.Order
    stmt = select(Order).order_by(Order.created_at.desc(), Order.id.desc())
    other = select(Order).order_by(Order.created_at, Order.id)
    with Session(orders.engine) as s:
        token = keyset_page(s, stmt, 10).next_cursor
        signed = keyset_page(s, stmt, 10, signing_key="secret").next_cursor
        assert token is not None
        assert signed is not None
        for cursor in (token[:-3], token + "A", "not a cursor!", ""):
            with pytest.raises(InvalidCursor):
                keyset_page(s, stmt, 10, after=cursor)
        raw = base64.urlsafe_b64decode(signed + "=" * (-len(signed) % 4))
        for i in range(len(raw)):  # tampering needs a signature to be seen
            changed = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1 :]
            cursor = base64.urlsafe_b64encode(changed).decode().rstrip("=")
            with pytest.raises(InvalidCursor):
                keyset_page(s, stmt, 10, after=cursor, signing_key="secret")
        with pytest.raises(InvalidCursor, match="different ordering"):
            keyset_page(s, other, 10, after=token)
        # An unsigned cursor can be forged; values that do not fit the columns are refused.
        plan_ordering = "kp_order.created_at DESC, kp_order.id DESC"
        for forged in (["not a time", 5], [dt.datetime(2024, 1, 1), "5"], [None, 5], [True, 1]):
            ordering = plan_ordering.replace("kp_order", Order.__tablename__)
            cursor = encode_cursor(forged, ordering=ordering)
            with pytest.raises(InvalidCursor, match="a value"):
                keyset_page(s, stmt, 10, after=cursor)
        # NULL placement of a NOT NULL column changes nothing: the cursor still fits.
        same = select(Order).order_by(Order.created_at.desc().nulls_last(), Order.id.desc())
        assert (
            keyset_page(s, same, 10, after=token).items
            == keyset_page(s, stmt, 10, after=token).items
        )
        with pytest.raises(ValueError, match="invalid cursor"):  # what a 400 handler catches
            keyset_page(s, stmt, 10, before=token[:5])


def test_signed_cursors_need_the_key(orders: Shop):
    Order = orders.Order
    stmt = select(Order).order_by(Order.id)
    with Session(orders.engine) as s:
        signed = keyset_page(s, stmt, 10, signing_key="k1").next_cursor
        unsigned = keyset_page(s, stmt, 10).next_cursor
        assert signed is not None
        assert unsigned is not None
        page = keyset_page(s, stmt, 10, after=signed, signing_key="k1")
        assert [o.id for o in page.items] == list(range(11, 21))
        for cursor, key in ((signed, "k2"), (signed, None), (unsigned, "k1")):
            with pytest.raises(InvalidCursor):
                keyset_page(s, stmt, 10, after=cursor, signing_key=key)


def test_statements_and_arguments_that_cannot_be_paginated(orders: Shop):
    Order = orders.Order
    ordered = select(Order).order_by(Order.id)
    keyless = Table("kp_keyless", MetaData(), Column("x", Integer))
    with Session(orders.engine) as s:
        cases: list[tuple[Callable[[], Any], str]] = [
            (lambda: keyset_page(s, select(Order), 10), "needs an ORDER BY"),
            (lambda: keyset_page(s, ordered.limit(5), 10), "LIMIT or OFFSET"),
            (lambda: keyset_page(s, ordered, 0), "per_page"),
            (lambda: keyset_page(s, ordered, 10, after="x", before="y"), "at most one"),
            (lambda: keyset_page(s, ordered, 10, after="x", last=True), "at most one"),
            (lambda: keyset_page(s, ordered, 10, total="roughly"), "total"),  # type: ignore[arg-type]
            (lambda: keyset_page(s, select(keyless).order_by(keyless.c.x), 10), "primary key"),
            (lambda: keyset_page(s, text("SELECT 1"), 10), "select()"),  # type: ignore[arg-type]
            (lambda: list(iter_keyset(s, ordered, 0)), "batch_size"),
        ]
        for call, message in cases:
            with pytest.raises(PaginationError, match=message):
                call()
    with orders.engine.connect() as conn, pytest.raises(PaginationError, match="Session"):
        keyset_page(conn, ordered, 10)
    with pytest.raises(PaginationError, match="Session, Connection or Engine"):
        keyset_page("sqlite://", ordered, 10)  # type: ignore[arg-type]


# -- totals, JSON, routing and the cache ------------------------------------------------------


def test_exact_and_estimated_totals(shop: Shop):
    Order = shop.Order
    stmt = select(Order).where(Order.id > 20).order_by(Order.id)
    with shop.engine.begin() as conn:
        if shop.engine.dialect.name == "postgresql":
            conn.execute(text(f"ANALYZE {Order.__tablename__}"))
        elif shop.engine.dialect.name == "mysql":
            conn.execute(text(f"ANALYZE TABLE {Order.__tablename__}"))
    with Session(shop.engine) as s:
        exact = keyset_page(s, stmt, 10, total="exact")
        estimate = keyset_page(s, stmt, 10, total="estimate")
    assert (exact.total, exact.total_is_estimate) == (100, False)
    assert estimate.total is not None
    if shop.engine.dialect.name == "sqlite":  # no planner estimate: counted
        assert (estimate.total, estimate.total_is_estimate) == (100, False)
    else:
        assert estimate.total_is_estimate
        assert 10 <= estimate.total <= 1000  # the planner's guess, from ANALYZE's statistics


def test_a_page_of_plain_values_is_json_ready(orders: Shop):
    import json

    table = orders.Order.__table__
    stmt = select(table.c.id).order_by(table.c.id)
    with orders.engine.connect() as conn:
        page = keyset_page(conn, stmt, 3, total="exact")
    doc = page.to_dict()
    doc["items"] = [r.id for r in page.items]
    assert json.loads(json.dumps(doc)) == {
        "items": [1, 2, 3],
        "next_cursor": page.next_cursor,
        "prev_cursor": None,
        "has_next": True,
        "has_prev": False,
        "total": 120,
        "total_is_estimate": False,
    }
    assert isinstance(page, Page)
    ids = Page(items=[1, 2], next_cursor="a", prev_cursor=None, has_next=True, has_prev=False)
    assert json.loads(json.dumps(ids.to_dict()))["items"] == [1, 2]


def test_pages_through_a_routing_session_read_from_the_replica(
    postgres_url: str, replica_url: str, make_engine: MakeEngine
):
    primary = make_engine(postgres_url)
    replica = make_engine(replica_url, read_only=True)
    shop = Shop(primary)
    try:
        Order = shop.Order
        stmt = select(Order).order_by(Order.created_at.desc(), Order.id.desc())
        served: list[str | None] = []

        def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if Order.__tablename__ in statement:
                served.append(engine_role(conn.engine))

        for engine in (primary, replica):
            event.listen(engine, "before_cursor_execute", note)
        deadline = time.monotonic() + 30
        with RoutingSession(primary=primary, replicas=[replica]) as s:
            while s.scalar(select(func.count()).select_from(Order)) != 120:
                assert time.monotonic() < deadline, "the replica did not replay the inserts"
                time.sleep(0.05)
            served.clear()
            assert len(walk_forward(s, stmt, 50)) == 120
        assert served
        assert set(served) == {"replica"}
    finally:
        shop.drop()


def test_cached_pages_are_served_from_the_query_cache(orders: Shop):
    Order = orders.Order
    cache = QueryCache(MemoryBackend())
    cache.attach(orders.engine)
    try:
        stmt = select(Order).order_by(Order.id).options(cached())
        with Session(orders.engine) as s:
            first = keyset_page(s, stmt, 10)
            after_first = cache.stats()
            again = keyset_page(s, stmt, 10, after=first.next_cursor)
            again_hit = keyset_page(s, stmt, 10, after=first.next_cursor)
        stats = cache.stats()
        assert [o.id for o in again.items] == [o.id for o in again_hit.items] == list(range(11, 21))
        assert after_first.misses >= 1
        assert stats.hits >= after_first.hits + 1  # the same page twice: the second is a hit
    finally:
        cache.detach()
