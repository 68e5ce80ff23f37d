"""COPY text format: the statement, the escaping of every type, and a PostgreSQL round trip."""

from __future__ import annotations

import datetime
import enum
import io
import json
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Engine,
    Enum,
    Float,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    Numeric,
    PickleType,
    String,
    Table,
    Text,
    Time,
    TypeDecorator,
    Uuid,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeEngine

from sqlperf.bulk.copy import copy_sql, encode_copy
from sqlperf.exceptions import ConfigurationError

UTC = datetime.timezone.utc


def one(value: Any, type_: TypeEngine[Any] | type[TypeEngine[Any]]) -> bytes:
    """The encoded field of ``value`` alone in a column of ``type_``, without the newline."""
    data = encode_copy([(value,)], [type_]).getvalue()
    assert data.endswith(b"\n")
    return data[:-1]


class Color(enum.Enum):
    red = "R"
    green = "G"


class Size(enum.IntEnum):
    large = 3


class Upper(TypeDecorator[str]):
    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else value.upper()


# -- the statement ------------------------------------------------------------------------


def test_copy_sql_quotes_like_sqlalchemy() -> None:
    t = Table(
        "Events",
        MetaData(),
        Column("id", Integer),
        Column("user", String),  # a reserved word
        Column("Name", String, key="name"),
        schema="app",
    )
    assert copy_sql(t, ["id", "user", "name"]) == (
        'COPY app."Events" (id, "user", "Name") FROM STDIN WITH (FORMAT text, ENCODING \'UTF8\')'
    )


def test_copy_sql_target_overrides_the_table() -> None:
    t = Table("t", MetaData(), Column("id", Integer), Column("v", Text), schema="s")
    assert copy_sql(t, ["v"], target="tmp_Stage").startswith('COPY "tmp_Stage" (v) FROM STDIN')


def test_copy_sql_rejects_unknown_and_missing_columns() -> None:
    t = Table("t", MetaData(), Column("id", Integer))
    with pytest.raises(ConfigurationError, match=r"'nope' is not a column of t \(its columns: id"):
        copy_sql(t, ["id", "nope"])
    with pytest.raises(ConfigurationError, match="at least one column"):
        copy_sql(t, [])


# -- escaping, type by type ---------------------------------------------------------------


def test_null() -> None:
    for type_ in (Integer(), Text(), Numeric(), LargeBinary(), Date(), Boolean()):
        assert one(None, type_) == b"\\N"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("plain", b"plain"),
        ("", b""),
        ("a\tb", b"a\\tb"),
        ("a\nb", b"a\\nb"),
        ("a\rb", b"a\\rb"),
        ("a\\b", b"a\\\\b"),
        ("\\N", b"\\\\N"),
        ("\\", b"\\\\"),
        ("\\\\N", b"\\\\\\\\N"),
        ("'\"", b"'\""),
        ("\b\f\v", b"\b\f\v"),  # data characters in text format, left as they are
        ("ü€😀", "ü€😀".encode()),
    ],
)
def test_strings(text: str, field: bytes) -> None:
    assert one(text, Text()) == field


def test_strings_escaped_only_where_needed_in_a_mixed_column() -> None:
    data = encode_copy([("a",), (None,), ("b\tc",), ("",)], [String()]).getvalue()
    assert data == b"a\n\\N\nb\\tc\n\n"


def test_str_subclasses_write_their_text() -> None:
    class Tag(str, enum.Enum):
        x = "x\ty"

    assert one(Tag.x, String()) == b"x\\ty"


def test_bool() -> None:
    assert one(True, Boolean()) == b"t"
    assert one(False, Boolean()) == b"f"


def test_int() -> None:
    assert one(0, Integer()) == b"0"
    assert one(-(10**20), Numeric()) == b"-100000000000000000000"
    assert one(Size.large, Integer()) == b"3"  # digits, not "Size.large"


def test_float() -> None:
    assert one(1.5, Float()) == b"1.5"
    assert one(1e100, Double()) == b"1e+100"
    assert one(0.1, Double()) == b"0.1"
    assert one(math.nan, Float()) == b"NaN"
    assert one(math.inf, Float()) == b"Infinity"
    assert one(-math.inf, Float()) == b"-Infinity"


def test_whole_floats_in_integer_columns_are_written_as_ints() -> None:
    assert one(3.0, Integer()) == b"3"
    assert one(3.0, BigInteger()) == b"3"
    assert one(3.5, Integer()) == b"3.5"  # the server says what is wrong with it
    assert one(3.0, Float()) == b"3.0"


def test_decimal() -> None:
    assert one(Decimal("12.340"), Numeric()) == b"12.340"
    assert one(Decimal("-1E+3"), Numeric()) == b"-1E+3"
    assert one(Decimal("NaN"), Numeric()) == b"NaN"
    assert one(Decimal("-sNaN"), Numeric()) == b"NaN"
    assert one(Decimal("Infinity"), Numeric()) == b"Infinity"


def test_bytes_in_bytea_hex_format() -> None:
    assert one(b"\x00\x01\xff\\", LargeBinary()) == b"\\\\x0001ff5c"
    assert one(bytearray(b"\x0a"), LargeBinary()) == b"\\\\x0a"
    assert one(memoryview(b"ab"), LargeBinary()) == b"\\\\x6162"
    assert one(b"", LargeBinary()) == b"\\\\x"


def test_dates_and_times() -> None:
    naive = datetime.datetime(2024, 2, 29, 13, 14, 15, 123456)
    assert one(naive, DateTime()) == b"2024-02-29T13:14:15.123456"
    aware = datetime.datetime(
        2024, 1, 1, 9, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))
    )
    assert one(aware, DateTime(timezone=True)) == b"2024-01-01T09:00:00-05:00"
    assert one(datetime.date(1, 1, 1), Date()) == b"0001-01-01"
    assert one(datetime.time(23, 59, 59, 5), Time()) == b"23:59:59.000005"


def test_timedelta() -> None:
    delta = datetime.timedelta(days=2, seconds=3, microseconds=4)
    assert one(delta, Interval()) == b"2 days 3.000004 seconds"
    assert one(-datetime.timedelta(seconds=1), Interval()) == b"-1 days 86399.000000 seconds"


def test_uuid() -> None:
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert one(value, Uuid()) == b"12345678-1234-5678-1234-567812345678"
    assert one(str(value), Uuid(as_uuid=False)) == b"12345678-1234-5678-1234-567812345678"


def test_json_is_dumped_then_escaped() -> None:
    value = {"a": [1, None], "t": "x\ty\\", "ü": "€"}
    field = one(value, postgresql.JSONB())
    unescaped = field.decode().replace("\\\\", "\\")  # undo COPY's escaping of backslashes
    assert "\t" not in field.decode()
    assert json.loads(unescaped) == value
    assert one([1, 2], JSON()) == b"[1, 2]"
    assert one("text", JSON()) == b'"text"'  # a JSON string, as SQLAlchemy binds it


def test_json_none_follows_none_as_null() -> None:
    assert one(None, JSON()) == b"null"  # JSON null, as in an INSERT through SQLAlchemy
    assert one(None, JSON(none_as_null=True)) == b"\\N"
    assert one(JSON.NULL, JSON(none_as_null=True)) == b"null"


def test_enum_writes_what_sqlalchemy_stores() -> None:
    assert one(Color.red, Enum(Color)) == b"red"  # member names by default
    by_value = Enum(Color, values_callable=lambda members: [m.value for m in members])
    assert one(Color.red, by_value) == b"R"
    assert one("red", Enum(Color)) == b"red"
    assert one("purple", Enum(Color)) == b"purple"  # SQLAlchemy passes unknown strings on
    with pytest.raises(ConfigurationError, match=r"column 0, Enum.*, row 0: .*'purple'"):
        one("purple", Enum(Color, validate_strings=True))


def test_type_decorators_process_their_values() -> None:
    assert one("abc", Upper()) == b"ABC"
    assert one(None, Upper()) == b"\\N"


def test_pickle_type_is_bytea() -> None:
    field = one({"a": 1}, PickleType())
    assert field.startswith(b"\\\\x")


def test_arrays() -> None:
    assert one([1, 2, None], ARRAY(Integer)) == b'{"1","2",NULL}'
    assert one([], ARRAY(Integer)) == b"{}"
    assert one([[1, 2], [3, 4]], ARRAY(Integer, dimensions=2)) == b'{{"1","2"},{"3","4"}}'
    # array quoting first (\ -> \\, " -> \"), then COPY's escaping (\ -> \\, tab -> \t)
    assert one(['a"b', "c\\d", "e\tf", "", "NULL"], ARRAY(Text)) == (
        b'{"a\\\\"b","c\\\\\\\\d","e\\tf","","NULL"}'
    )


def test_lists_outside_json_and_array_columns_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="only JSON and ARRAY columns"):
        one([1, 2], Text())


def test_unsupported_types_name_the_column_row_and_type() -> None:
    class Opaque:
        pass

    rows = [(1, "a"), (2, Opaque())]
    with pytest.raises(
        ConfigurationError, match=r"column 1 \('note'\), Text\(\), row 1: a value of type .*Opaque"
    ):
        encode_copy(rows, [Integer(), Text()], names=["id", "note"])
    with pytest.raises(
        ConfigurationError, match=r"column 1, Text\(\), row 0: a value of type dict"
    ):
        encode_copy([(1, {"a": 1})], [Integer(), Text()])
    with pytest.raises(ConfigurationError, match=r"of type tests\.test_bulk_copy\.Color"):
        one(Color.red, String())


def test_numpy_and_pandas_values_point_to_prepare_rows() -> None:
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    with pytest.raises(ConfigurationError, match=r"numpy\.int64.*prepare_rows"):
        one(np.int64(1), Integer())
    with pytest.raises(ConfigurationError, match=r"NaTType.*prepare_rows"):
        one(pd.NaT, DateTime())
    assert one(np.float64(1.5), Float()) == b"1.5"  # a float subclass
    assert one(pd.Timestamp("2024-01-01 12:00"), DateTime()) == b"2024-01-01T12:00:00"


def test_mixed_types_in_one_column() -> None:
    data = encode_copy([(1,), (Decimal("2.5"),), (None,), (3.0,)], [Numeric()]).getvalue()
    assert data == b"1\n2.5\n\\N\n3.0\n"


def test_rows_and_batches() -> None:
    rows = ((i, f"r{i}") for i in range(25_001))  # a generator, more than two batches
    out = encode_copy(rows, [Integer(), Text()])
    assert isinstance(out, io.BytesIO)
    assert out.tell() == 0
    lines = out.read().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) == 25_002
    assert lines[25_000] == b"25000\tr25000"
    assert encode_copy([], [Integer()]).getvalue() == b""


def test_row_length_mismatch_names_the_row() -> None:
    rows = [(i, "x") for i in range(10_005)] + [(1,)]
    with pytest.raises(ConfigurationError, match="row 10005 has 1 values but there are 2 columns"):
        encode_copy(rows, [Integer(), Text()])
    with pytest.raises(ConfigurationError, match="row 0 has 3 values"):
        encode_copy([(1, 2, 3)], [Integer(), Integer()])
    with pytest.raises(ConfigurationError, match="at least one column"):
        encode_copy([()], [])
    with pytest.raises(ConfigurationError, match="row 0 is a dict; encode_copy takes sequences"):
        encode_copy([{"a": 1}], [Integer()])  # type: ignore[list-item]


# -- a real PostgreSQL round trip ---------------------------------------------------------

TRICKY = "\t|\n|\r|\\|\\N|\\\\N|'|\"|\\|ü€😀"


@pytest.fixture
def pg_table(
    postgres_url: str, make_engine: Callable[..., Engine]
) -> Iterator[tuple[Engine, Table]]:
    engine = make_engine(postgres_url)
    table = Table(
        f"sqlperf_t_{uuid.uuid4().hex[:10]}",
        MetaData(),
        Column("id", Integer),  # nullable: one row is NULL in every column
        Column("note", Text),
        Column("at", DateTime(timezone=True)),
        Column("amount", Numeric(20, 6)),
        Column("doc", postgresql.JSONB(none_as_null=True)),
        Column("blob", LargeBinary),
        Column("key", Uuid),
        Column("flag", Boolean),
        Column("ratio", Double),
        Column("span", Interval),
        Column("day", Date),
        Column("tags", postgresql.ARRAY(Text)),
    )
    table.create(engine)
    try:
        yield engine, table
    finally:
        table.drop(engine)


def copy_rows(
    engine: Engine, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    raw = engine.raw_connection()
    try:
        cursor: Any = raw.cursor()
        types = [table.c[key].type for key in columns]
        cursor.copy_expert(copy_sql(table, columns), encode_copy(rows, types, names=columns))
        raw.commit()
    finally:
        raw.close()


def test_postgresql_round_trip(pg_table: tuple[Engine, Table]) -> None:
    engine, table = pg_table
    columns = [c.key for c in table.c]
    rows: list[tuple[Any, ...]] = [
        (
            1,
            TRICKY,
            datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            Decimal("12345678901234.123456"),
            {"text": TRICKY, "list": [1, 2.5, None, True], "nested": {"k": "\\N"}},
            b"\x00\x01\\\t\n\xff",
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            True,
            0.1,
            datetime.timedelta(days=3, seconds=7, microseconds=11),
            datetime.date(2024, 2, 29),
            [TRICKY, "", None, 'a"b', "NULL"],
        ),
        (2, "", None, None, None, None, None, None, None, None, None, None),
        (
            3,
            "\\N",
            datetime.datetime(
                1999,
                12,
                31,
                23,
                59,
                59,
                tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
            ),
            Decimal("-0.000001"),
            [],
            b"",
            uuid.UUID(int=0),
            False,
            -math.inf,
            -datetime.timedelta(seconds=1),
            datetime.date(1, 1, 1),
            [],
        ),
        (4, "\\", None, Decimal("NaN"), "str", None, None, None, math.nan, None, None, None),
        (None,) * len(columns),
    ]
    copy_rows(engine, table, columns, rows)

    with engine.connect() as conn:
        back = [tuple(row) for row in conn.execute(select(table).order_by(table.c.id.nulls_last()))]
        note_is_null = conn.execute(
            select(table.c.id, table.c.note.is_(None), table.c.doc.is_(None)).order_by(
                table.c.id.nulls_last()
            )
        ).all()

    assert len(back) == len(rows)
    for sent, got in zip(rows, back, strict=True):
        for key, a, b in zip(columns, sent, got, strict=True):
            if isinstance(a, float) and math.isnan(a):
                assert isinstance(b, float)
                assert math.isnan(b), key
            elif isinstance(a, Decimal) and a.is_nan():
                assert isinstance(b, Decimal)
                assert b.is_nan(), key
            elif isinstance(a, bytes):
                assert bytes(b) == a, key
            else:
                assert b == a, (key, a, b)
    # the empty string stays '' (not NULL); JSONB(none_as_null=True) None is SQL NULL
    assert note_is_null == [
        (1, False, False),
        (2, False, True),
        (3, False, False),
        (4, False, False),
        (None, True, True),
    ]


def test_postgresql_subset_of_columns_and_staging_target(pg_table: tuple[Engine, Table]) -> None:
    engine, table = pg_table
    staging = f"sqlperf_t_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {staging} (id integer, note text)")
    try:
        raw = engine.raw_connection()
        try:
            cursor: Any = raw.cursor()
            data = encode_copy([(7, "a\tb"), (8, None)], [Integer(), Text()])
            cursor.copy_expert(copy_sql(table, ["id", "note"], target=staging), data)
            raw.commit()
        finally:
            raw.close()
        with engine.connect() as conn:
            got = conn.exec_driver_sql(f"SELECT id, note FROM {staging} ORDER BY id").all()
        assert [tuple(r) for r in got] == [(7, "a\tb"), (8, None)]
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {staging}")
