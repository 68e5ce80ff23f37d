"""Keyset pagination against an independent oracle, on SQLite, PostgreSQL and MariaDB.

Random tables with duplicates and NULLs in the sort columns, random orderings
(directions, ``nulls_first()``/``nulls_last()`` or the dialect's default), random page
sizes: walking forward page by page, walking backward from the end, and
``iter_keyset`` must each give exactly the rows of the ordering a plain Python sort
computes, each row once. Then a few hundred rows walked deterministically, and a
check that no page is ever fetched with ``OFFSET``.
"""

from __future__ import annotations

import functools
import itertools
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    Connection,
    Date,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.orm import Session, registry

from sqlperf.pagination import iter_keyset, keyset_page
from tests.conftest import require
from tests.keyset_walks import backward_pages, forward_pages

MakeEngine = Callable[..., Engine]
Row = dict[str, Any]
Target = Session | Connection | Engine

# Tiny domains, so that ties and NULLs are frequent. The strings are lowercase ASCII
# letters (and the empty string, which is not NULL): every collation sorts them as Python does.
A_VALUES: list[int | None] = [None, 0, 1, 2]
B_VALUES: list[str | None] = [None, "", "a", "ab", "b", "ba"]
C_VALUES: list[int] = [0, 1, 2]
D_VALUES: list[date | None] = [None, date(2023, 12, 31), date(2024, 1, 1), date(2024, 2, 29)]
SORT_COLUMNS = ("a", "b", "c", "d")

MAX_ROWS = 40
EXAMPLES = 40


# -- the oracle ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One ORDER BY term: a column of the table, its direction, and the NULL modifier."""

    name: str  # "a", "b", "c", "d" or "id"
    desc: bool
    nulls: str | None  # "first", "last", or None for the dialect's default
    bare: bool = False  # ascending written as the bare column, without .asc()


def nulls_come_first(key: Key, dialect: str) -> bool:
    """Whether NULLs of ``key`` come before every value, in the order asked for.

    An explicit modifier wins. Otherwise PostgreSQL sorts NULL as larger than every value
    (ASC: NULLs last, DESC: NULLs first); MariaDB/MySQL and SQLite as smaller (ASC: NULLs
    first, DESC: NULLs last).
    """
    if key.nulls is not None:
        return key.nulls == "first"
    if dialect == "postgresql":
        return key.desc
    assert dialect in ("sqlite", "mysql"), dialect
    return not key.desc


def complete(keys: Sequence[Key]) -> list[Key]:
    """``keys``, with ``id`` appended in the direction of the last key unless already there.

    (Of the sort columns only ``id`` is unique: ``c`` is NOT NULL but has duplicates.)
    """
    if any(k.name == "id" for k in keys):
        return list(keys)
    return [*keys, Key("id", keys[-1].desc, None)]


def oracle(rows: Sequence[Row], keys: Sequence[Key], dialect: str) -> list[int]:
    """The ids of ``rows`` in the order ``keys`` give on ``dialect``."""
    full = complete(keys)

    def compare(x: Row, y: Row) -> int:
        for key in full:
            u, v = x[key.name], y[key.name]
            if u is None and v is None:
                continue
            if u is None:  # NULLs sit where the dialect or the modifier puts them
                return -1 if nulls_come_first(key, dialect) else 1
            if v is None:
                return 1 if nulls_come_first(key, dialect) else -1
            if u == v:
                continue
            ascending = -1 if u < v else 1
            return -ascending if key.desc else ascending
        assert x["id"] == y["id"], (x, y)  # id is always a key: distinct rows never tie
        return 0

    return [row["id"] for row in sorted(rows, key=functools.cmp_to_key(compare))]


# -- the database -------------------------------------------------------------------------


@dataclass
class Db:
    kind: str  # "sqlite", "postgresql" or "mysql": whose NULL rules apply
    engine: Engine
    table: Table
    mapped: type[Any]  # a class mapped imperatively onto ``table``


@pytest.fixture(
    params=[
        pytest.param("sqlite-file", id="sqlite-file"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
        pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    ]
)
def db(request: pytest.FixtureRequest, tmp_path: Path, make_engine: MakeEngine) -> Iterator[Db]:
    """An engine and an empty table of its own (plus an ORM class over it) on each dialect."""
    kind: str = request.param
    url = f"sqlite:///{tmp_path / 'keyset.db'}" if kind == "sqlite-file" else require(kind)
    engine = make_engine(url)
    metadata = MetaData()
    table = Table(
        f"sqlperf_ks_{uuid.uuid4().hex[:10]}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("a", Integer, nullable=True),
        Column("b", String(10), nullable=True),
        Column("c", Integer, nullable=False),
        Column("d", Date, nullable=True),
    )
    mapper_registry = registry()
    mapped = type("KeysetItem", (), {})
    mapper_registry.map_imperatively(mapped, table)
    metadata.create_all(engine)
    try:
        yield Db("sqlite" if kind == "sqlite-file" else kind, engine, table, mapped)
    finally:
        mapper_registry.dispose()
        metadata.drop_all(engine)


def fill(db: Db, rows: Sequence[Row]) -> None:
    """Replace the table's rows by ``rows``, inserted in a scrambled order of their ids."""
    scrambled = sorted(rows, key=lambda row: (row["id"] * 37) % 41)  # a permutation of 1..40
    with db.engine.begin() as conn:
        conn.execute(delete(db.table))
        if scrambled:
            conn.execute(insert(db.table), scrambled)


def order_by(columns: Callable[[str], Any], keys: Sequence[Key]) -> list[Any]:
    clauses = []
    for key in keys:
        column = columns(key.name)
        clause = column.desc() if key.desc else (column if key.bare else column.asc())
        if key.nulls == "first":
            clause = clause.nulls_first()
        elif key.nulls == "last":
            clause = clause.nulls_last()
        clauses.append(clause)
    return clauses


def ids_of(items: Sequence[Any]) -> list[int]:
    return [item.id for item in items]


def check_walks(
    target: Target, stmt: Any, per_page: int, batch_size: int, expected: list[int]
) -> None:
    """Forward, backward and ``iter_keyset`` all give ``expected``; the cursors link up."""
    forward = forward_pages(target, stmt, per_page)
    assert [i for p in forward for i in ids_of(p.items)] == expected, "forward walk"
    assert not forward[0].has_prev
    assert forward[0].prev_cursor is None
    for n, page in enumerate(forward):  # full pages, but the last (empty only if all is)
        assert len(page.items) == (per_page if n < len(forward) - 1 else len(page.items))
        assert page.items or not expected
    for earlier, page in itertools.pairwise(forward):  # a page's prev_cursor: the page before
        assert page.has_prev
        back = keyset_page(target, stmt, per_page, before=page.prev_cursor)
        assert ids_of(back.items) == ids_of(earlier.items), "before=prev_cursor"
        assert back.has_next
        assert back.has_prev == earlier.has_prev

    backward = backward_pages(target, stmt, per_page)
    assert [i for p in reversed(backward) for i in ids_of(p.items)] == expected, "backward walk"
    assert not backward[0].has_next
    assert backward[0].next_cursor is None
    for n, page in enumerate(backward):  # full pages, but the first
        assert len(page.items) == (per_page if n < len(backward) - 1 else len(page.items))
        assert page.items or not expected
    for later, page in itertools.pairwise(backward):  # a page's next_cursor: the page after
        assert page.has_next
        ahead = keyset_page(target, stmt, per_page, after=page.next_cursor)
        assert ids_of(ahead.items) == ids_of(later.items), "after=next_cursor"
        assert ahead.has_prev

    assert ids_of(list(iter_keyset(target, stmt, batch_size))) == expected, "iter_keyset"


# -- the property -------------------------------------------------------------------------


@st.composite
def tables(draw: st.DrawFn) -> list[Row]:
    """0..MAX_ROWS rows with ids 1..n (``fill`` inserts them out of id order).

    A plain ``st.lists`` mostly makes short lists (a few pages at most), hence the second
    branch, of 10 rows or more; the first lets a failure shrink to the fewest rows.
    """
    row = st.tuples(
        st.sampled_from(A_VALUES),
        st.sampled_from(B_VALUES),
        st.sampled_from(C_VALUES),
        st.sampled_from(D_VALUES),
    )
    values = draw(
        st.one_of(
            st.lists(row, max_size=MAX_ROWS),
            st.lists(row, min_size=10, max_size=MAX_ROWS),
        )
    )
    return [{"id": i, "a": a, "b": b, "c": c, "d": d} for i, (a, b, c, d) in enumerate(values, 1)]


@st.composite
def orderings(draw: st.DrawFn) -> list[Key]:
    """1-3 distinct columns of a, b, c, d, sometimes with id somewhere among them."""
    names = draw(st.lists(st.sampled_from(SORT_COLUMNS), min_size=1, max_size=3, unique=True))
    if draw(st.integers(0, 3)) == 0:
        names.insert(draw(st.integers(0, len(names))), "id")
    return [
        Key(
            name,
            desc=draw(st.booleans()),
            nulls=draw(st.sampled_from([None, "first", "last"])),
            bare=draw(st.booleans()),
        )
        for name in names
    ]


@dataclass(frozen=True)
class Case:
    """One example: the rows, the ORDER BY, the page size and ``iter_keyset``'s batch size."""

    rows: list[Row]
    keys: list[Key]
    per_page: int
    batch_size: int


cases = st.builds(
    Case,
    rows=tables(),
    keys=orderings(),
    per_page=st.integers(1, 7),
    batch_size=st.integers(1, 10),
)

PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # ``db`` (engine and table) is made once per test and shared by its examples on
    # purpose: each example empties the table and inserts its own rows.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@PROPERTY
@given(case=cases, on_engine=st.booleans())
def test_core_walks_match_oracle(db: Db, case: Case, on_engine: bool):
    fill(db, case.rows)
    expected = oracle(case.rows, case.keys, db.kind)
    stmt = select(db.table).order_by(*order_by(lambda name: db.table.c[name], case.keys))
    if on_engine:  # keyset_page opens a connection of its own for each query
        check_walks(db.engine, stmt, case.per_page, case.batch_size, expected)
        return
    with db.engine.connect() as conn:
        check_walks(conn, stmt, case.per_page, case.batch_size, expected)


@PROPERTY
@given(case=cases)
def test_orm_walks_match_oracle(db: Db, case: Case):
    fill(db, case.rows)
    expected = oracle(case.rows, case.keys, db.kind)
    stmt = select(db.mapped).order_by(*order_by(lambda name: getattr(db.mapped, name), case.keys))
    with Session(db.engine) as session:  # a fresh identity map: the ids are reused
        check_walks(session, stmt, case.per_page, case.batch_size, expected)
        assert all(isinstance(item, db.mapped) for item in session.identity_map.values())


# -- a few hundred rows -------------------------------------------------------------------


def random_rows(n: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    ids = list(range(1, n + 1))
    rng.shuffle(ids)
    return [
        {
            "id": i,
            "a": rng.choice([None, 0, 1, 2, 3, 4]),
            "b": rng.choice(B_VALUES),
            "c": rng.choice(C_VALUES),
            "d": rng.choice(D_VALUES),
        }
        for i in ids
    ]


def test_five_hundred_rows(db: Db):
    rows = random_rows(500, seed=20240611)
    fill(db, rows)
    keys = [Key("a", True, "last"), Key("b", False, None), Key("d", True, None)]
    expected = oracle(rows, keys, db.kind)
    assert sorted(expected) == list(range(1, 501))
    stmt = select(db.table).order_by(*order_by(lambda name: db.table.c[name], keys))
    with db.engine.connect() as conn:
        forward = forward_pages(conn, stmt, 50)
        assert [len(p.items) for p in forward] == [50] * 10
        assert [i for p in forward for i in ids_of(p.items)] == expected
        backward = backward_pages(conn, stmt, 50)
        assert [len(p.items) for p in backward] == [50] * 10
        assert [i for p in reversed(backward) for i in ids_of(p.items)] == expected
        assert ids_of(list(iter_keyset(conn, stmt, batch_size=64))) == expected


# -- no OFFSET ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [
        # nullable keys, mixed directions: the expanded boundary condition
        [Key("a", True, "last"), Key("b", False, "first"), Key("d", True, None)],
        # NOT NULL keys, one direction: the row-value comparison on PostgreSQL and SQLite
        [Key("c", False, None)],
    ],
    ids=["expanded", "row-value"],
)
def test_pages_never_use_offset(db: Db, keys: list[Key]):
    rows = random_rows(120, seed=7)
    fill(db, rows)
    expected = oracle(rows, keys, db.kind)
    stmt = select(db.table).order_by(*order_by(lambda name: db.table.c[name], keys))
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    with db.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")  # the connection's set-up is done before capturing
        event.listen(db.engine, "before_cursor_execute", capture)
        try:
            forward = forward_pages(conn, stmt, 25)
            backward = backward_pages(conn, stmt, 25)
            streamed = ids_of(list(iter_keyset(conn, stmt, batch_size=30)))
        finally:
            event.remove(db.engine, "before_cursor_execute", capture)
    assert [i for p in forward for i in ids_of(p.items)] == expected
    assert [i for p in reversed(backward) for i in ids_of(p.items)] == expected
    assert streamed == expected
    assert len(statements) == 5 + 5 + 4  # one query a page, one a batch, nothing else
    for statement, parameters in statements:
        sql = " ".join(statement.split()).upper()
        assert "LIMIT" in sql, statement
        if db.kind == "sqlite" and sql.endswith(" LIMIT ? OFFSET ?"):
            # SQLAlchemy's SQLite compiler always renders a LIMIT as "LIMIT ? OFFSET ?",
            # binding 0 to the OFFSET when the statement has none: allowed, as OFFSET 0 only.
            assert parameters[-1] == 0, (statement, parameters)
            sql = sql.removesuffix(" OFFSET ?")
        assert "OFFSET" not in sql, statement
