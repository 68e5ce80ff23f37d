"""Query fingerprints: one per query shape, different for different shapes."""

from __future__ import annotations

import doctest
import importlib
import threading
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
)

from sqlperf.capture.fingerprint import (
    FINGERPRINT_VERSION,
    Fingerprint,
    FingerprintCache,
    fingerprint,
    normalize,
)

# (a, b, mysql): two statements of one shape.
SAME = [
    # literals of every type
    ("select * from t where id = 1", "select * from t where id = 42", False),
    ("select * from t where name = 'alice'", "select * from t where name = 'bob'", False),
    ("select * from t where a = 5", "select * from t where a = 'five'", False),
    ("select * from t where price > 10.5", "select * from t where price > 3", False),
    ("select * from t where x = 1e10", "select * from t where x = 2.5E-3", False),
    ("select * from t where x = .5", "select * from t where x = 0.5", False),
    ("select * from t where flags = 0x1F", "select * from t where flags = 255", False),
    ("select * from t where b = B'101'", "select * from t where b = X'1f'", False),
    ("select * from t where n = N'abc'", "select * from t where n = 'abc'", False),
    ("select * from t where a = -1", "select * from t where a = 7", False),
    ("select a + -1.5e-3 from t", "select a + 2 from t", False),
    ("select -1, (-2) from t", "select 3, (4) from t", False),
    (
        "select * from t where a between -5 and 10",
        "select * from t where a between 1 and 'z'",
        False,
    ),
    ("select * from t where active = true", "select * from t where active = 1", False),
    ("select * from t where active = FALSE", "select * from t where active = 0", False),
    # IN lists, arrays, VALUES rows
    ("select * from t where id in (1)", "select * from t where id in (1, 2, 3)", False),
    (
        "select * from t where id in (1, 2, 3)",
        "select * from t where id in (" + ", ".join(str(n) for n in range(50)) + ")",
        False,
    ),
    ("select * from t where id in (-1, -2)", "select * from t where id in (%s)", False),
    (
        "select * from t where c not in ('a')",
        "select * from t where c not in ('a', 'b', 'c')",
        False,
    ),
    (
        "select * from t where c = any(array[1, 2, 3])",
        "select * from t where c = ANY(ARRAY[4])",
        False,
    ),
    (
        "insert into t (a, b) values (1, 'x')",
        "insert into t (a, b) values (1, 'x'), (2, 'y'), (3, 'z')",
        False,
    ),
    (
        "insert into t (a, b) values (1, 'a'), (2, 'b')",
        "INSERT INTO t (a, b) VALUES (%s, %s)",
        False,
    ),
    (
        "select * from t where (a, b) in ((1, 2), (3, 4))",
        "select * from t where (a, b) in ((5, 6))",
        False,
    ),
    (
        "INSERT INTO t (a, b) SELECT p0::INTEGER, p1::VARCHAR FROM (VALUES (%(a__0)s::INTEGER, "
        "%(b__0)s::VARCHAR, 0), (%(a__1)s::INTEGER, %(b__1)s::VARCHAR, 1)) AS imp_sen(p0, p1, "
        "sen_counter) ORDER BY sen_counter RETURNING t.id, t.id AS id__1",
        "INSERT INTO t (a, b) SELECT p0::INTEGER, p1::VARCHAR FROM (VALUES (%(a__0)s::INTEGER, "
        "%(b__0)s::VARCHAR, 0)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter "
        "RETURNING t.id, t.id AS id__1",
        False,
    ),
    # whitespace, comments, case
    ("select a,b from t where a=1", "SELECT  a ,\n\tb\nFROM t\r\nWHERE a = 1", False),
    ("select f( x ) from t", "select f(x) from t", False),
    ("select a<=1, x->>'k' from t", "select a <= 1, x ->> 'j' from t", False),
    ("select x::int from t", "select x :: int from t", False),
    ("select a from t -- why\nwhere b = 1", "select a from t where b = 1", False),
    ("select /* note */ a from t", "select a from t", False),
    ("select a from t /*sqlperf_fp='ab12',route='replica'*/", "select a from t", False),
    ("select /*+ IndexScan(t) */ a from t", "select a from t", False),
    ("select /*!40001 SQL_NO_CACHE */ a from t", "select a from t", True),
    ("SELECT A FROM Users WHERE ID = 1", "select a from users where id = 2", False),
    ("select a from t;", "select a from t", False),
    # savepoints
    ("SAVEPOINT sa_savepoint_1", "savepoint sa_savepoint_7", False),
    ("RELEASE SAVEPOINT sa_savepoint_1", "release savepoint sa_savepoint_12", False),
    ("ROLLBACK TO SAVEPOINT sa_savepoint_1", "rollback to savepoint sp2", False),
    ("release sp_a", "RELEASE sp_b", False),
    # strings: dollar quotes, E'', quotes and comment markers inside
    ("select $$it's a $ body$$ from t", "select 'x' from t", False),
    ("select $fn$ with $$ and 'quotes' $fn$ from t", "select 1 from t", False),
    ("select E'it\\'s \\\\ -- no' from t", "select 'plain' from t", False),
    ("select 'it''s' from t", "select 'x' from t", False),
    (
        "select * from t where a = 'a -- b' and c = 1",
        "select * from t where a = ? and c = 1",
        False,
    ),
    (
        "select * from t where a = '/* x' and c = 1",
        "select * from t where a = 'y' and c = 1",
        False,
    ),
    ("select * from t where a = 'a; drop table t' ", "select * from t where a = 'b'", False),
    (
        "select * from t where a = 'back\\' and b = 2",
        "select * from t where a = ? and b = 2",
        False,
    ),
    # every placeholder style
    ("select * from t where a = %s", "select * from t where a = 1", False),
    ("select * from t where a = %(a_1)s", "select * from t where a = ?", False),
    ("select * from t where a = :a", "select * from t where a = $1", False),
    ("select * from t where a = ?1 and b = ?2", "select * from t where a = 1 and b = ?", False),
    ("select x::int from t where a = :a", "select x::int from t where a = 5", False),
    # MySQL mode
    ("select a from t # note\nwhere b = 1", "select a from t where b = 1", True),
    ("select a from t -- note\nwhere b = 1", "select a from t where b = 1", True),
    ("select * from t where a = 'it\\'s'", "select * from t where a = 'x'", True),
    ('select * from t where a = "double \\" quoted"', "select * from t where a = 'single'", True),
    ("select * from `t` where a in (1, 2)", "select * from `t` where a in (%s)", True),
    ("select a--1 from t", "select a - 2 from t", True),
]

# (a, b, mysql): two statements of different shapes.
DIFFERENT = [
    ("select * from users", "select * from orders", False),
    ("select a from t", "select b from t", False),
    ("select * from t1", "select * from t2", False),
    ("select col_1 from t", "select col_2 from t", False),
    ("select * from public.t", "select * from t", False),
    ("select * from t where a = 1", "select * from t where a > 1", False),
    ("select * from t where a < 1", "select * from t where a <= 1", False),
    ("select * from t where a = 1", "select * from t where a in (1)", False),
    ("select * from t where a in (1)", "select * from t where a not in (1)", False),
    ("select * from t where a is null", "select * from t where a = 1", False),
    ("select * from t where a is null", "select * from t where a is not null", False),
    ("select * from t where a = null", "select * from t where a = 1", False),
    ("select * from t order by a asc", "select * from t order by a desc", False),
    ("select * from t order by a", "select * from t order by b", False),
    ("insert into t values (1, 2)", "insert into t values (1, 2, 3)", False),
    ("insert into t (a) values (1)", "insert into t (b) values (1)", False),
    ("insert into t values (1, 2), (3, default)", "insert into t values (1, 2)", False),
    ("select * from a join b on a.id = b.a_id", "select * from a", False),
    (
        "select * from a join b on a.id = b.a_id",
        "select * from a left join b on a.id = b.a_id",
        False,
    ),
    ("select * from t limit 10", "select * from t", False),
    ("select * from t limit 10", "select * from t limit 10 offset 5", False),
    ('select * from "Users"', "select * from users", False),
    ('select * from "Users"', 'select * from "users"', False),
    ("select * from `Users`", "select * from users", True),
    ("select count(*) from t", "select count(id) from t", False),
    ("select count(id) from t", "select count(distinct id) from t", False),
    ("select a from t union select a from u", "select a from t union all select a from u", False),
    ("select distinct a from t", "select a from t", False),
    ("select a, count(*) from t group by a", "select a, count(*) from t", False),
    ("select * from t where a in (1, 2)", "select * from t where a in (1, b)", False),
    ("select * from t where a in (select a from u)", "select * from t where a in (1)", False),
    (
        "select * from t where exists (select 1)",
        "select * from t where not exists (select 1)",
        False,
    ),
    ("select * from t where a = 1 and b = 2", "select * from t where a = 1 or b = 2", False),
    ("select * from t where a like 'x%'", "select * from t where a ilike 'x%'", False),
    ("select a::int from t", "select a::bigint from t", False),
    ("select a -> 'k' from t", "select a ->> 'k' from t", False),
    ("select * from t", "select * from t for update", False),
    ("savepoint sa_savepoint_1", "release savepoint sa_savepoint_1", False),
    ("select a - 1 from t", "select a, -1 from t", False),
    ("select a - 1 from t", "select a + 1 from t", False),
    ("update t set a = 1", "delete from t", False),
    ('select "name" from t', "select 'name' from t", False),
    ("select a # 1 from t", "select a from t", False),
    ("select 'a\\', b from t", "select 'x' from t", False),
    ("select * from t where a = 1", "select * from t where b = 1", True),
]


def _ids(pairs: list[tuple[str, str, bool]]) -> list[str]:
    return [f"{n}:{a[:40]}" for n, (a, _, _) in enumerate(pairs)]


@pytest.mark.parametrize(("a", "b", "mysql"), SAME, ids=_ids(SAME))
def test_same_shape_gives_one_fingerprint(a, b, mysql):
    fa, fb = fingerprint(a, mysql=mysql), fingerprint(b, mysql=mysql)
    assert fa.text == fb.text
    assert fa.id == fb.id
    assert fa == fb


@pytest.mark.parametrize(("a", "b", "mysql"), DIFFERENT, ids=_ids(DIFFERENT))
def test_different_shapes_give_different_fingerprints(a, b, mysql):
    fa, fb = fingerprint(a, mysql=mysql), fingerprint(b, mysql=mysql)
    assert fa.text != fb.text
    assert fa.id != fb.id


def test_tables_are_big_enough():
    assert len(SAME) >= 35
    assert len(DIFFERENT) >= 35


@pytest.mark.parametrize(
    ("sql", "mysql", "expected"),
    [
        ("SELECT * FROM t WHERE id IN (1, 2, 3) -- x", False, "select * from t where id in (?+)"),
        (
            "select a from t where b = ANY (ARRAY[1, 2])",
            False,
            "select a from t where b = any (array[?+])",
        ),
        (
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y');",
            False,
            "insert into t (a, b) values (?, ?)",
        ),
        ("SELECT t1.col_2 FROM anon_1", False, "select t1.col_2 from anon_1"),
        ("select a-1, x = -1, f( -2 )", False, "select a - ?, x = ?, f(?)"),
        ("select x :: int, t . a", False, "select x::int, t.a"),
        ('select "Users"."Id", `b` from "Users"', False, 'select "Users"."Id", `b` from "Users"'),
        ("select \"x\", 'y\\\\', 'z\\'' from t", True, "select ?, ?, ? from t"),
        ("select a # b", False, "select a # b"),
        ("select a # b", True, "select a"),
        ("rollback to savepoint sa_savepoint_3", False, "rollback to savepoint ?"),
        ("select null, true, false", False, "select null, ?, ?"),
        ("select '' 'unterminated", False, "select ? ?"),
        ("/* only a comment */", False, ""),
    ],
)
def test_normalized_text(sql, mysql, expected):
    assert normalize(sql, mysql=mysql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t", True),
        ("(SELECT a FROM t) UNION (SELECT a FROM u)", True),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("with recursive r(n) as (select 1 union all select n + 1 from r) select n from r", True),
        ("INSERT INTO t VALUES (1)", False),
        ("UPDATE t SET a = 1", False),
        ("DELETE FROM t", False),
        ("WITH x AS (SELECT id FROM t) DELETE FROM t WHERE id IN (SELECT id FROM x)", False),
        ("WITH x AS (UPDATE t SET a = 1 RETURNING id) SELECT * FROM x", False),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False),
        ("with s as (select 1) merge into t using s on true when matched then do nothing", False),
        ("SAVEPOINT sa_savepoint_1", False),
        ("RELEASE SAVEPOINT sa_savepoint_1", False),
        ("SHOW search_path", False),
        ("", False),
    ],
)
def test_is_select(sql, expected):
    assert fingerprint(sql).is_select is expected


# Changing any of these ids changes every stored fingerprint: it requires
# bumping FINGERPRINT_VERSION.
GOLDEN = [
    ("SELECT users.id, users.name FROM users WHERE users.id IN (1, 2, 3)", "8721e877e670ba6b"),
    ("INSERT INTO orders (user_id, total) VALUES (%s, %s), (%s, %s)", "2a972071e4449f1d"),
    ("SAVEPOINT sa_savepoint_1", "9b6ac7bf28f91969"),
]


@pytest.mark.parametrize(("sql", "expected_id"), GOLDEN)
def test_golden_ids(sql, expected_id):
    assert FINGERPRINT_VERSION == 1
    fp = fingerprint(sql)
    assert fp.id == expected_id
    assert len(fp.id) == 16
    assert fp.id == fp.id.lower()


def test_docstring_examples():
    # The package exports the function ``fingerprint`` under the module's name.
    module = importlib.import_module("sqlperf.capture.fingerprint")
    result = doctest.testmod(module)
    assert result.attempted >= 8
    assert result.failed == 0


def test_fingerprint_is_frozen():
    fp = fingerprint("select 1")
    assert isinstance(fp, Fingerprint)
    with pytest.raises(AttributeError):
        fp.text = "x"  # type: ignore[misc]


# --- FingerprintCache --------------------------------------------------------


def test_cache_hit_does_not_recompute():
    cache = FingerprintCache()
    first = cache.get("SELECT * FROM t WHERE id = 1")
    assert cache.misses == 1
    for _ in range(100):
        assert cache.get("SELECT * FROM t WHERE id = 1") is first
    assert cache.misses == 1
    assert len(cache) == 1
    other = cache.get("SELECT * FROM t WHERE id = 2")
    assert cache.misses == 2
    assert other == first
    assert len(cache) == 2


def test_cache_mysql_mode():
    assert FingerprintCache(mysql=True).get("select 1 # x").text == "select ?"
    assert FingerprintCache().get("select 1 # x").text == "select ? # x"


def test_cache_eviction_keeps_it_bounded():
    cache = FingerprintCache(max_entries=10)
    for n in range(35):
        cache.get(f"select c{n} from t")
        assert len(cache) <= 10
    assert cache.misses == 35
    cache.get("select c34 from t")  # the newest entry survived every eviction
    assert cache.misses == 35
    cache.get("select c0 from t")  # the oldest did not
    assert cache.misses == 36
    with pytest.raises(ValueError, match="max_entries"):
        FingerprintCache(max_entries=0)


def test_cache_is_consistent_across_threads():
    sqls = [f"select * from t{n % 40} where id = {n}" for n in range(400)]
    expected = {sql: fingerprint(sql) for sql in sqls}
    bounded = FingerprintCache(max_entries=64)
    unbounded = FingerprintCache()
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def work(offset: int) -> None:
        barrier.wait()
        for round_ in range(5):
            for i in range(len(sqls)):
                sql = sqls[(i * 7 + offset + round_) % len(sqls)]
                for cache in (bounded, unbounded):
                    got = cache.get(sql)
                    if got != expected[sql]:
                        errors.append(f"{sql!r}: {got} != {expected[sql]}")
                if len(bounded) > 64:
                    errors.append(f"bounded cache grew to {len(bounded)}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(unbounded) == len(sqls)
    assert len(sqls) <= unbounded.misses <= 8 * len(sqls)
    assert len(bounded) <= 64


# --- property: literals substituted into a template ----------------------------

TEMPLATES = [
    "SELECT * FROM t WHERE a = ? AND b IN (?, ?, ?) AND c > ? ORDER BY d LIMIT ?",
    "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)",
    "UPDATE t SET a = ?, b = a - ? WHERE id = ?",
    "SELECT ?, x + ?, f(?) FROM t WHERE y BETWEEN ? AND ?",
]

literals = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(alphabet=st.characters(blacklist_characters="\x00")),
)


def _literal(value: object, mysql: bool) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    assert isinstance(value, str)
    if mysql:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "'" + value.replace("'", "''") + "'"


@settings(database=None, max_examples=200)
@given(
    template=st.sampled_from(TEMPLATES),
    values=st.lists(literals, min_size=6, max_size=6),
    mysql=st.booleans(),
)
def test_literals_give_the_template_fingerprint(template, values, mysql):
    filled = template.replace("?", "{}").format(*(_literal(v, mysql) for v in values))
    assert fingerprint(filled, mysql=mysql) == fingerprint(template, mysql=mysql)


@settings(database=None, max_examples=200)
@given(sql=st.text(), mysql=st.booleans())
def test_any_text_gets_a_fingerprint(sql, mysql):
    fp = fingerprint(sql, mysql=mysql)
    assert len(fp.id) == 16
    assert fp == fingerprint(sql, mysql=mysql)


# --- statements SQLAlchemy really sends ----------------------------------------


def _rows(n: int, first_id: int | None = None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [{"name": f"n{i}", "score": i / 2} for i in range(n)]
    if first_id is not None:
        for i, row in enumerate(rows):
            row["id"] = first_id + i
    return rows


class _Captured:
    """The statements an engine sends, as its ``before_cursor_execute`` sees them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []

    def __call__(self, conn, cursor, statement, *args) -> None:
        self.statements.append(statement)

    def take(self) -> list[str]:
        taken, self.statements = self.statements, []
        return taken


@pytest.fixture
def captured_engine(request: pytest.FixtureRequest) -> Iterator[tuple[_Captured, Table]]:
    url: str = request.getfixturevalue(request.param) if request.param != "sqlite" else "sqlite://"
    engine = create_engine(url, insertmanyvalues_page_size=100)
    table = Table(
        f"sqlperf_t_{uuid.uuid4().hex[:10]}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(50)),
        Column("score", Float),
    )
    captured = _Captured(engine)
    try:
        table.create(engine)
        event.listen(engine, "before_cursor_execute", captured)
        yield captured, table
    finally:
        if event.contains(engine, "before_cursor_execute", captured):
            event.remove(engine, "before_cursor_execute", captured)
        table.drop(engine, checkfirst=True)
        engine.dispose()


def _one_fingerprint(statements: list[str], mysql: bool) -> str:
    texts = {fingerprint(sql, mysql=mysql).text for sql in statements}
    assert len(texts) == 1, texts
    return texts.pop()


@pytest.mark.parametrize(
    "captured_engine",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres_url", id="postgresql", marks=pytest.mark.postgres),
        pytest.param("mysql_url", id="mysql", marks=pytest.mark.mysql),
    ],
    indirect=True,
)
def test_sqlalchemy_statements(captured_engine):
    captured, t = captured_engine
    mysql = captured.engine.dialect.name in ("mysql", "mariadb")

    with captured.engine.begin() as conn:
        for n in (1, 3, 40):
            conn.execute(select(t).where(t.c.id.in_(list(range(n))))).all()
    selects = captured.take()
    assert len(selects) == 3
    assert "in (?+)" in _one_fingerprint(selects, mysql)
    if captured.engine.dialect.name != "sqlite":
        assert len(set(selects)) == 3  # one bind parameter per value

    # Explicit ids: without them a one-row insert on PostgreSQL adds RETURNING id.
    with captured.engine.begin() as conn:
        first = 1_000_000
        for n in (1, 5, 2000):
            conn.execute(insert(t), _rows(n, first))
            first += n
    plain = captured.take()
    text = _one_fingerprint(plain, mysql)
    assert text.endswith("(id, name, score) values (?, ?, ?)")
    if captured.engine.dialect.name == "postgresql":
        assert len(plain) == 1 + 1 + 20  # insertmanyvalues batches of 100
        assert len(set(plain)) == 3

    with captured.engine.begin() as conn:
        for n in (1, 5, 2000):
            assert len(conn.execute(insert(t).returning(t.c.id), _rows(n)).all()) == n
    returning = captured.take()
    assert len(set(returning)) == 3  # batches of 1, 5 and 100 rows
    assert "values (?, ?) returning" in _one_fingerprint(returning, mysql)

    if captured.engine.dialect.name == "sqlite":
        return
    # One row is a plain INSERT ... RETURNING; batches, down to a last batch of
    # one row, are the sorted insertmanyvalues form (imp_sen on PostgreSQL).
    sorted_insert = insert(t).returning(t.c.id, sort_by_parameter_order=True)
    with captured.engine.begin() as conn:
        for n in (5, 2000, 201):
            ids = conn.execute(sorted_insert, _rows(n)).scalars().all()
            assert ids == sorted(ids)
    batches = captured.take()
    assert len(set(batches)) == 3  # batches of 5, 100 and 1 rows
    text = _one_fingerprint(batches, mysql)
    if captured.engine.dialect.name == "postgresql":
        assert "from (values (?, ?, ?)) as imp_sen" in text


def test_sqlalchemy_savepoints_give_one_fingerprint():
    engine = create_engine("sqlite://")
    captured = _Captured(engine)
    event.listen(engine, "before_cursor_execute", captured)
    try:
        with engine.connect() as conn:
            for _ in range(3):
                with conn.begin_nested():
                    pass
            savepoint = conn.begin_nested()
            savepoint.rollback()
            conn.rollback()
    finally:
        engine.dispose()
    names = {sql.split()[-1] for sql in captured.statements}
    assert len(names) == 4
    texts = [normalize(sql) for sql in captured.statements]
    assert set(texts) == {"savepoint ?", "release savepoint ?", "rollback to savepoint ?"}
