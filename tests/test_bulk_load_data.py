"""LOAD DATA LOCAL INFILE: the statement, the escaping of every type, and MariaDB round trips
that store exactly what SQLAlchemy's ``insert()`` of the same rows stores."""

from __future__ import annotations

import datetime
import enum
import functools
import importlib
import json
import math
import os
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
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
    event,
    func,
    insert,
    make_url,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.types import TypeEngine

from sqlperf.bulk.load_data import (
    encode_load_data,
    load_data,
    load_data_sql,
    local_infile_enabled,
)
from sqlperf.exceptions import ConfigurationError

MakeEngine = Callable[..., Engine]
Row = tuple[Any, ...]

# The module, not the function of the same name that the package may export one day.
load_data_module = importlib.import_module("sqlperf.bulk.load_data")


def one(value: Any, type_: TypeEngine[Any] | type[TypeEngine[Any]]) -> bytes:
    """The encoded field of ``value`` alone in a column of ``type_``, without the newline."""
    data = encode_load_data([(value,)], [type_])
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


class Blob(TypeDecorator[bytes]):
    impl = LargeBinary
    cache_ok = True


def tz(hours: float) -> datetime.timezone:
    return datetime.timezone(datetime.timedelta(hours=hours))


# -- the statement ------------------------------------------------------------------------

FIELDS = (
    "CHARACTER SET utf8mb4 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n'"
)


def test_load_data_sql_quotes_like_sqlalchemy() -> None:
    t = Table(
        "Events",
        MetaData(),
        Column("id", Integer),
        Column("order", String),  # a reserved word
        Column("Name", String, key="name"),
        schema="app",
    )
    assert load_data_sql(t, ["id", "order", "name"], "/tmp/x/rows.tsv") == (
        f"LOAD DATA LOCAL INFILE '/tmp/x/rows.tsv' INTO TABLE app.`Events` {FIELDS} "
        "(id, `order`, `Name`)"
    )


def test_binary_and_bit_columns_are_set_from_variables() -> None:
    t = Table(
        "t",
        MetaData(),
        Column("id", Integer),
        Column("blob", LargeBinary),
        Column("pickled", PickleType),  # a TypeDecorator over LargeBinary
        Column("raw", mysql.VARBINARY(10)),
        Column("long", mysql.LONGBLOB),
        Column("mine", Blob),
        Column("flags", mysql.BIT(8)),
        Column("note", Text),
    )
    sql = load_data_sql(t, [c.key for c in t.c], "/tmp/rows.tsv")
    assert sql.endswith(
        "(id, @sqlperf_1, @sqlperf_2, @sqlperf_3, @sqlperf_4, @sqlperf_5, @sqlperf_6, note) "
        "SET `blob` = UNHEX(@sqlperf_1), pickled = UNHEX(@sqlperf_2), raw = UNHEX(@sqlperf_3), "
        "`long` = UNHEX(@sqlperf_4), mine = UNHEX(@sqlperf_5), "
        "flags = CAST(@sqlperf_6 AS UNSIGNED)"
    )
    assert load_data_sql(t, ["note", "blob"], "/p").endswith(
        "(note, @sqlperf_1) SET `blob` = UNHEX(@sqlperf_1)"
    )


@pytest.mark.parametrize(
    "path", ["/tmp/it's", '/tmp/"x"', "C:\\Temp\\rows", "/tmp/a\nb", "/t\0", ""]
)
def test_load_data_sql_refuses_paths_that_would_break_the_literal(path: str) -> None:
    t = Table("t", MetaData(), Column("id", Integer))
    with pytest.raises(ConfigurationError, match="path"):
        load_data_sql(t, ["id"], path)


def test_percent_signs_are_doubled_for_the_drivers_formatting() -> None:
    t = Table("a%b", MetaData(), Column("pct%", Integer))
    assert load_data_sql(t, ["pct%"], "/tmp/100%/rows") == (
        f"LOAD DATA LOCAL INFILE '/tmp/100%%/rows' INTO TABLE `a%%b` {FIELDS} (`pct%%`)"
    )


def test_load_data_sql_rejects_unknown_and_missing_columns() -> None:
    t = Table("t", MetaData(), Column("id", Integer))
    with pytest.raises(ConfigurationError, match=r"'nope' is not a column of t \(its columns: id"):
        load_data_sql(t, ["id", "nope"], "/tmp/rows")
    with pytest.raises(ConfigurationError, match="at least one column"):
        load_data_sql(t, [], "/tmp/rows")
    assert load_data_sql(t, "id", "/tmp/rows").endswith("(id)")  # a str is one column


# -- escaping, type by type ---------------------------------------------------------------


def test_null() -> None:
    for type_ in (Integer(), Text(), Numeric(), LargeBinary(), Date(), Boolean(), mysql.BIT()):
        assert one(None, type_) == b"\\N"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("plain", b"plain"),
        ("", b""),
        ("a\tb", b"a\\tb"),
        ("a\nb", b"a\\nb"),
        ("a\rb", b"a\\rb"),
        ("a\0b", b"a\\0b"),
        ("a\\b", b"a\\\\b"),
        ("\\N", b"\\\\N"),
        ("\\", b"\\\\"),
        ("\\\\N", b"\\\\\\\\N"),
        ("NULL", b"NULL"),  # a string: without ENCLOSED BY only \N is NULL
        ("'\"`", b"'\"`"),
        ("\b\x1a", b"\b\x1a"),  # data characters, left as they are
        ("%s %(x)s %%", b"%s %(x)s %%"),  # data, never formatted
        ("ü€😀", "ü€😀".encode()),
    ],
)
def test_strings(text: str, field: bytes) -> None:
    assert one(text, Text()) == field


def test_strings_escaped_only_where_needed_in_a_mixed_column() -> None:
    data = encode_load_data([("a",), (None,), ("b\0c",), ("",)], [String()])
    assert data == b"a\n\\N\nb\\0c\n\n"


def test_str_subclasses_write_their_text() -> None:
    class Tag(str, enum.Enum):
        x = "x\ty"

    assert one(Tag.x, String()) == b"x\\ty"


def test_bool_and_int() -> None:
    assert one(True, Boolean()) == b"1"
    assert one(False, Boolean()) == b"0"
    assert one(0, Integer()) == b"0"
    assert one(-(10**20), Numeric()) == b"-100000000000000000000"
    assert one(Size.large, Integer()) == b"3"  # digits, not "Size.large"
    assert one(5, mysql.BIT(8)) == b"5"  # the statement CASTs it
    assert one(True, Integer()) == b"1"  # Boolean's bind processor makes ints itself
    assert one(False, String()) == b"0"


def test_float() -> None:
    assert one(1.5, Float()) == b"1.5"
    assert one(1e100, Double()) == b"1e+100"
    assert one(0.1, Double()) == b"0.1"
    assert one(3.0, Integer()) == b"3"  # a whole float in an Integer column is an int
    assert one(3.0, BigInteger()) == b"3"
    assert one(2.5, Integer()) == b"2"  # half to even, as the server rounds an INSERT's float
    assert one(-3.5, Integer()) == b"-4"
    assert one(1e100, String()) == b"1e+100"  # the server's own text would be 1e100
    assert one(3.0, Float()) == b"3.0"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, Decimal("NaN"), Decimal("-Inf")])
def test_nan_and_infinities_are_refused_naming_the_column_and_row(value: Any) -> None:
    rows = [(1.0,), (None,), (value,)]
    with pytest.raises(
        ConfigurationError, match=r"column 0 \('ratio'\), Double\(\), row 2: .*cannot be stored"
    ):
        encode_load_data(rows, [Double()], names=["ratio"])
    with pytest.raises(ConfigurationError, match=r"row 1: .*cannot be stored"):
        encode_load_data([(1,), (value,)], [Integer()])  # mixed types, and an Integer column


def test_decimal_is_written_positionally_like_pymysql() -> None:
    assert one(Decimal("12.340"), Numeric()) == b"12.340"
    assert one(Decimal("-1E+3"), Numeric()) == b"-1000"
    assert one(Decimal("1E-7"), Numeric()) == b"0.0000001"


def test_bytes_are_hex_in_binary_columns_only() -> None:
    assert one(b"\x00\x01\xff\\\t\n", LargeBinary()) == b"0001ff5c090a"
    assert one(bytearray(b"\x0a"), LargeBinary()) == b"0a"
    assert one(memoryview(b"ab"), mysql.VARBINARY(2)) == b"6162"
    assert one(b"", LargeBinary()) == b""
    assert one(b"\x01", Blob()) == b"01"
    with pytest.raises(ConfigurationError, match=r"bytes go into binary columns only"):
        one(b"abc", Text())
    with pytest.raises(ConfigurationError, match=r"of type str.*a binary column takes bytes"):
        one("abc", Blob())  # no DBAPI here, so no bind processor turns it into bytes


def test_pickle_type_is_hex() -> None:
    field = one({"a": 1}, PickleType())
    assert bytes.fromhex(field.decode()).startswith(b"\x80")  # a pickle


def test_dates_and_times_as_pymysql_writes_them() -> None:
    assert one(datetime.datetime(2024, 2, 29, 13, 14, 15, 123456), DateTime()) == (
        b"2024-02-29 13:14:15.123456"
    )
    assert one(datetime.datetime(2024, 2, 29, 13, 14, 15), DateTime()) == b"2024-02-29 13:14:15"
    assert one(datetime.datetime(999, 1, 2, 3, 4, 5, 6), DateTime()) == (
        b"0999-01-02 03:04:05.000006"
    )
    # aware: its own wall-clock time, offset dropped, as PyMySQL's INSERT literal
    aware = datetime.datetime(2024, 1, 1, 9, 0, 0, 500, tzinfo=tz(-5))
    assert one(aware, DateTime(timezone=True)) == b"2024-01-01 09:00:00.000500"
    assert one(aware.replace(microsecond=0), DateTime()) == b"2024-01-01 09:00:00"
    assert one(datetime.date(1, 1, 1), Date()) == b"0001-01-01"
    assert one(datetime.time(23, 59, 59, 5), Time()) == b"23:59:59.000005"
    assert one(datetime.time(1, 2, 3, tzinfo=tz(2)), Time()) == b"01:02:03"


def test_timedelta_for_time_columns() -> None:
    assert one(datetime.timedelta(hours=30, minutes=1, seconds=2), Time()) == b"30:01:02"
    assert one(datetime.timedelta(seconds=1, microseconds=5), Time()) == b"00:00:01.000005"
    assert one(-datetime.timedelta(hours=1, seconds=1), Time()) == b"-01:00:01"
    assert one(-datetime.timedelta(microseconds=1), Time()) == b"-00:00:00.000001"


def test_uuid() -> None:
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert one(value, Uuid()) == b"12345678123456781234567812345678"  # CHAR(32) on mysql
    assert one(str(value), Uuid(as_uuid=False)) == b"12345678123456781234567812345678"
    assert one(value, String()) == b"12345678-1234-5678-1234-567812345678"


def test_json_is_dumped_then_escaped() -> None:
    value = {"a": [1, None], "t": "x\ty\\", "ü": "€"}
    field = one(value, JSON())
    unescaped = field.decode().replace("\\\\", "\\")  # undo LOAD DATA's escaping
    assert "\t" not in field.decode()
    assert json.loads(unescaped) == value
    assert one("text", JSON()) == b'"text"'  # a JSON string, as SQLAlchemy binds it


def test_json_none_follows_none_as_null() -> None:
    assert one(None, JSON()) == b"null"  # JSON null, as in an INSERT through SQLAlchemy
    assert one(None, JSON(none_as_null=True)) == b"\\N"
    assert one(JSON.NULL, JSON(none_as_null=True)) == b"null"


def test_the_dialects_bind_processors_apply() -> None:
    dialect = MySQLDialect_pymysql(json_serializer=lambda v: "serialized")
    assert encode_load_data([({"a": 1},)], [JSON()], dialect=dialect) == b"serialized\n"


def test_enum_and_type_decorators_write_what_sqlalchemy_stores() -> None:
    assert one(Color.red, Enum(Color)) == b"red"  # member names by default
    by_value = Enum(Color, values_callable=lambda members: [m.value for m in members])
    assert one(Color.red, by_value) == b"R"
    with pytest.raises(ConfigurationError, match=r"column 0, Enum.*, row 0: .*'purple'"):
        one("purple", Enum(Color, validate_strings=True))
    assert one("a\tb", Upper()) == b"A\\tB"
    assert one(None, Upper()) == b"\\N"


def test_unsupported_types_name_the_column_row_and_type() -> None:
    class Opaque:
        pass

    with pytest.raises(
        ConfigurationError,
        match=r"column 1 \('note'\), Text\(\), row 1: a value of type .*Opaque, which LOAD DATA",
    ):
        encode_load_data([(1, "a"), (2, Opaque())], [Integer(), Text()], names=["id", "note"])
    with pytest.raises(ConfigurationError, match=r"of type dict.*only JSON columns"):
        encode_load_data([(1, {"a": 1})], [Integer(), Text()])
    with pytest.raises(ConfigurationError, match=r"of type tests\.test_bulk_load_data\.Color"):
        one(Color.red, String())


def test_text_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"column 1, String\(\), row 1: .*UTF-8"):
        encode_load_data([(1, "ok"), (2, "lone \ud800 surrogate")], [Integer(), String()])


def test_rows_and_batches() -> None:
    rows = ((i, f"r{i}") for i in range(25_001))  # a generator, more than two batches
    lines = encode_load_data(rows, [Integer(), Text()]).split(b"\n")
    assert lines[-1] == b""
    assert len(lines) == 25_002
    assert lines[25_000] == b"25000\tr25000"
    assert encode_load_data([], [Integer()]) == b""


def test_row_length_mismatch_names_the_row() -> None:
    rows = [(i, "x") for i in range(10_005)] + [(1,)]
    with pytest.raises(ConfigurationError, match="row 10005 has 1 values but there are 2 columns"):
        encode_load_data(rows, [Integer(), Text()])
    with pytest.raises(ConfigurationError, match="at least one column"):
        encode_load_data([()], [])
    with pytest.raises(ConfigurationError, match="row 0 is a dict; encode_load_data takes"):
        encode_load_data([{"a": 1}], [Integer()])  # type: ignore[list-item]


# -- MariaDB: LOAD DATA stores what insert() stores ----------------------------------------------


@pytest.fixture
def engine(mysql_url: str, make_engine: MakeEngine) -> Engine:
    return make_engine(mysql_url, connect_args={"local_infile": True})


class Twins:
    """Two tables with the same columns: one filled by load_data, one by insert()."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.metadata = MetaData()

    def make(self, *columns: Column[Any], name: str | None = None) -> tuple[Table, Table]:
        base = name or f"sqlperf_t_{uuid.uuid4().hex[:10]}"
        loaded, inserted = (
            Table(
                f"{base}_{suffix}",
                self.metadata,
                Column("id", Integer, primary_key=True, autoincrement=False),
                *[c._copy() for c in columns],
                mysql_charset="utf8mb4",
            )
            for suffix in ("l", "i")
        )
        self.metadata.create_all(self.engine, tables=[loaded, inserted])
        return loaded, inserted

    def fill(self, loaded: Table, inserted: Table, rows: Sequence[Row]) -> None:
        keys = [c.key for c in loaded.c]
        with self.engine.begin() as conn:
            assert load_data(conn, loaded, keys, rows) == len(rows)
            conn.execute(insert(inserted), [dict(zip(keys, row, strict=True)) for row in rows])

    def raw(self, table: Table) -> list[Row]:
        """The rows as the driver returns them, without SQLAlchemy's result processing."""
        name = self.engine.dialect.identifier_preparer.format_table(table)
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {name} ORDER BY id")]

    def typed(self, table: Table) -> list[Row]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(table).order_by(table.c.id))]

    def same(self, loaded: Table, inserted: Table) -> list[Row]:
        """Assert both tables hold the same values; return the typed rows."""
        assert self.raw(loaded) == self.raw(inserted)
        typed = self.typed(loaded)
        assert typed == self.typed(inserted)
        return typed


@pytest.fixture
def twins(engine: Engine) -> Iterator[Twins]:
    made = Twins(engine)
    yield made
    made.metadata.drop_all(engine)


HOSTILE = [
    "",
    " leading and trailing ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "a\tb\nc\rd",
    "\\",
    "\\\\",
    "\\N",
    "\\\\N",
    "N",
    "NULL",
    "null",
    "\\t\\n\\0\\Z\\b",  # escape sequences written out literally
    "'",
    '"',
    "`",
    "'\"`\\'",
    "\0",
    "a\0b\0",
    "\b\x1a\x7f",
    "%s %(x)s %% ?",
    "ü€ — 日本語",
    "😀🎉 4-byte",
    "\t\\N\t",
    "trailing backslash \\",
]


def test_hostile_strings_round_trip_like_insert(twins: Twins) -> None:
    loaded, inserted = twins.make(Column("short", String(64)), Column("long", Text))
    rows: list[Row] = [(i, text, text * 3) for i, text in enumerate(HOSTILE)]
    rows += [(100, None, ""), (101, "", None), (102, None, None), (103, "x", "".join(HOSTILE))]
    twins.fill(loaded, inserted, rows)
    assert twins.same(loaded, inserted) == rows  # and what was sent, '' and NULL apart


def test_every_type_round_trips_like_insert(twins: Twins) -> None:
    loaded, inserted = twins.make(
        Column("i", Integer),
        Column("big", BigInteger),
        Column("flag", Boolean),
        Column("amount", Numeric(12, 4)),
        Column("ratio", Float),
        Column("precise", Double),
        Column("name", String(50)),
        Column("body", Text),
        Column("blob", LargeBinary),
        Column("day", Date),
        Column("at", DateTime),
        Column("at6", mysql.DATETIME(fsp=6)),
        Column("clock", Time),
        Column("clock6", mysql.TIME(fsp=6)),
        Column("doc", JSON),
        Column("color", Enum(Color)),
        Column("key", Uuid),
        Column("bits", mysql.BIT(8)),
        Column("span", Interval),
        Column("shout", Upper(20)),
    )
    rows: list[Row] = [
        (
            1,
            -(2**31),
            2**63 - 1,
            True,
            Decimal("12345678.1234"),
            0.1,
            0.1,
            "name\t'x'",
            "body\n\\N",
            b"\x00\t\n\r\\\xff",
            datetime.date(2024, 2, 29),
            datetime.datetime(2024, 2, 29, 13, 14, 15, 999999),  # DATETIME(0) truncates
            datetime.datetime(2024, 2, 29, 13, 14, 15, 123456),
            datetime.time(23, 59, 59, 500000),
            datetime.time(1, 2, 3, 4),
            {"text": "ü\t\\N 😀", "list": [1, 2.5, None, True], "nested": {"k": {}}},
            Color.green,
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            255,
            datetime.timedelta(days=3, seconds=7, microseconds=11),
            "shout\tit",
        ),
        (
            2,
            3.0,  # a whole float in an Integer column
            -1,
            False,
            Decimal("-1E+3"),
            -2.5e38,
            5e-324,
            "",
            "",
            b"",
            datetime.date(1000, 1, 1),
            datetime.datetime(1970, 1, 1),
            datetime.datetime(9999, 12, 31, 23, 59, 59, 999999),
            datetime.timedelta(hours=-838, minutes=-59, seconds=-59),
            datetime.timedelta(hours=30, microseconds=7),
            [],
            "red",
            uuid.UUID(int=0),
            0,
            -datetime.timedelta(seconds=1),
            "",
        ),
        (3, *([None] * 20)),
    ]
    twins.fill(loaded, inserted, rows)
    back = twins.same(loaded, inserted)
    assert back[0][9] == rows[0][9]  # bytes exactly
    assert back[0][11] == datetime.datetime(2024, 2, 29, 13, 14, 15)
    assert back[0][12] == rows[0][12]
    assert back[1][1] == 3
    assert back[1][4] == Decimal("-1000.0000")
    assert back[2] == (3, *([None] * 20))  # JSON null reads back as None too


def test_values_of_another_type_than_the_column_like_insert(twins: Twins) -> None:
    loaded, inserted = twins.make(
        Column("s", String(60)),
        Column("n", BigInteger),
        Column("f", Float),
        Column("d", Numeric(8, 2)),
    )
    rows: list[Row] = [
        (1, Decimal("-1E+3"), 2.5, True, 1.005),
        (2, True, -2.5, Decimal("0.1"), True),
        (3, uuid.UUID(int=1), 0.5, Size.large, 2.5),
        (4, datetime.datetime(2024, 1, 2, 3, 4, 5, 6), Decimal("2.5"), 1, Decimal("1E+3")),
        (5, datetime.timedelta(hours=-1), True, 1e30, 7),
        (6, datetime.time(1, 2, 3), Size.large, None, None),
        (7, datetime.date(2024, 1, 2), 1e15 + 0.5, None, None),
    ]
    twins.fill(loaded, inserted, rows)
    twins.same(loaded, inserted)


def test_aware_datetimes_are_stored_like_insert(twins: Twins) -> None:
    loaded, inserted = twins.make(
        Column("at", DateTime(timezone=True)), Column("at6", mysql.DATETIME(fsp=6, timezone=True))
    )
    values = [
        datetime.datetime(2024, 1, 1, 9, 0, tzinfo=tz(-5)),
        datetime.datetime(2024, 1, 1, 23, 30, 15, 250, tzinfo=tz(5.5)),
        datetime.datetime(2024, 6, 1, 0, 0, tzinfo=datetime.timezone.utc),
    ]
    rows: list[Row] = [(i, v, v) for i, v in enumerate(values)]
    twins.fill(loaded, inserted, rows)
    back = twins.same(loaded, inserted)
    # MySQL's DATETIME has no zone: PyMySQL sends the wall-clock time and drops the offset
    assert [r[2] for r in back] == [v.replace(tzinfo=None) for v in values]


def test_bytes_round_trip_exactly(twins: Twins) -> None:
    loaded, inserted = twins.make(
        Column("blob", LargeBinary(length=2**24)),  # MEDIUMBLOB
        Column("raw", mysql.VARBINARY(300)),
        Column("pickled", PickleType),
    )
    every = bytes(range(256))
    big = random.Random(1).randbytes(1_000_000)
    rows: list[Row] = [
        (1, every, every[::-1], {"k": every}),
        (2, b"", b"", None),
        (3, None, None, [1, "\t"]),
        (4, big, b"\\N", b"\x00"),
        (5, bytearray(b"\x00\n"), memoryview(b"\xff\t"), 0),
    ]
    twins.fill(loaded, inserted, rows)
    back = twins.same(loaded, inserted)
    assert back == [
        (1, every, every[::-1], {"k": every}),
        (2, b"", b"", None),
        (3, None, None, [1, "\t"]),
        (4, big, b"\\N", b"\x00"),
        (5, b"\x00\n", b"\xff\t", 0),
    ]


def test_json_null_semantics_like_insert(twins: Twins) -> None:
    loaded, inserted = twins.make(Column("doc", JSON), Column("opt", JSON(none_as_null=True)))
    rows: list[Row] = [
        (1, None, None),
        (2, JSON.NULL, JSON.NULL),
        (3, {}, []),
        (4, "a string", 0),
        (5, {"ü": ["😀", None, {"\\": "\t"}]}, {"a": None}),
    ]
    twins.fill(loaded, inserted, rows)
    twins.same(loaded, inserted)
    with twins.engine.connect() as conn:
        nulls = [
            conn.execute(
                select(t.c.id, t.c.doc.is_(None), t.c.opt.is_(None)).order_by(t.c.id)
            ).all()
            for t in (loaded, inserted)
        ]
    assert nulls[0] == nulls[1]
    # JSON() stores None as JSON null; none_as_null=True as SQL NULL
    assert [tuple(r) for r in nulls[0]] == [
        (1, False, True),
        (2, False, False),
        (3, False, False),
        (4, False, False),
        (5, False, False),
    ]


def test_a_single_text_column_keeps_empty_strings(twins: Twins, engine: Engine) -> None:
    loaded, _ = twins.make(Column("s", Text))
    with engine.begin() as conn:
        # (id, s) and (s) alone: an empty line is a row of one empty field
        load_data(conn, loaded, ["id", "s"], [(1, ""), (2, None)])
    assert twins.typed(loaded) == [(1, ""), (2, None)]


def test_names_that_need_quoting(twins: Twins) -> None:
    loaded, inserted = twins.make(
        Column("order", Integer),
        Column("pct%", String(10)),
        Column("Mixed `Case`", String(10), key="mixed"),
        name=f"sqlperf_t_{uuid.uuid4().hex[:6]}%`x",
    )
    twins.fill(loaded, inserted, [(1, 2, "a%b", "c`d"), (2, None, "%s", "%%")])
    assert twins.same(loaded, inserted) == [(1, 2, "a%b", "c`d"), (2, None, "%s", "%%")]


def test_mariadb_dialect_and_the_engines_json_serializer_apply(
    mysql_url: str, make_engine: MakeEngine
) -> None:
    url = make_url(mysql_url).set(drivername="mariadb+pymysql")
    engine = make_engine(
        url,
        connect_args={"local_infile": True},
        json_serializer=functools.partial(json.dumps, ensure_ascii=False, sort_keys=True),
    )
    twins = Twins(engine)
    try:
        loaded, inserted = twins.make(Column("key", Uuid), Column("doc", JSON))
        value = uuid.UUID("12345678-1234-5678-1234-567812345678")
        twins.fill(loaded, inserted, [(1, value, {"b": "ü", "a": 1}), (2, None, None)])
        raw = twins.raw(loaded)
        assert raw == twins.raw(inserted)
        assert raw[0][1:] == (str(value), '{"a": 1, "b": "ü"}')  # native UUID; our serializer
    finally:
        twins.metadata.drop_all(engine)


def test_many_rows_in_one_statement(twins: Twins, engine: Engine) -> None:
    loaded, _ = twins.make(Column("s", String(20)))
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with engine.begin() as conn:
        assert load_data(conn, loaded, ["id", "s"], [(i, f"r{i}") for i in range(25_001)]) == 25_001
    assert sum(s.startswith("LOAD DATA") for s in statements) == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.max(loaded.c.s))).scalar_one() == "r9999"


def test_a_row_count_the_server_does_not_confirm_is_an_error(
    twins: Twins, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded, _ = twins.make(Column("s", String(20)))
    encode = load_data_module._encode_batches

    def one_row_more(*args: Any) -> Iterator[tuple[bytes, int]]:
        for data, count in encode(*args):
            yield data, count + 1

    monkeypatch.setattr(load_data_module, "_encode_batches", one_row_more)
    with (
        pytest.raises(ConfigurationError, match="sent 3 rows but the server stored 2"),
        engine.begin() as conn,
    ):
        load_data(conn, loaded, ["id", "s"], [(1, "a"), (2, "b")])
    assert twins.typed(loaded) == []


def test_no_rows_no_statement(twins: Twins, engine: Engine) -> None:
    loaded, _ = twins.make(Column("s", String(20)))
    with engine.begin() as conn:
        assert load_data(conn, loaded, ["id", "s"], []) == 0


def test_the_temporary_file_is_removed(
    twins: Twins, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    loaded, _ = twins.make(Column("s", String(20)))
    with engine.begin() as conn:
        load_data(conn, loaded, ["id", "s"], [(1, "a")])
        with pytest.raises(ConfigurationError, match=r"a value of type object"):
            load_data(conn, loaded, ["id", "s"], [(2, object())])
    assert os.listdir(tmp_path) == []


# -- local_infile ---------------------------------------------------------------------------


def test_local_infile_enabled_with_the_connect_arg_only(
    mysql_url: str, make_engine: MakeEngine, engine: Engine
) -> None:
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(3):
        with engine.connect() as conn:
            assert local_infile_enabled(conn)
            assert conn.connection.info["sqlperf_local_infile"] is True
    assert statements.count("SELECT @@local_infile") == 1  # once per pooled connection

    plain = make_engine(mysql_url)
    with plain.connect() as conn:
        assert not local_infile_enabled(conn)
        assert "sqlperf_local_infile" not in conn.connection.info  # the server was not asked
        table = Table("t", MetaData(), Column("id", Integer))
        with pytest.raises(ConfigurationError, match=r"connect_args=\{\"local_infile\": True\}"):
            load_data(conn, table, ["id"], [(1,)])


def test_local_infile_follows_the_servers_cached_answer(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.connection.info["sqlperf_local_infile"] = False  # as if @@local_infile were 0
        try:
            assert not local_infile_enabled(conn)
            table = Table("t", MetaData(), Column("id", Integer))
            with pytest.raises(ConfigurationError, match="local_infile off"):
                load_data(conn, table, ["id"], [(1,)])
        finally:
            del conn.connection.info["sqlperf_local_infile"]


def test_local_infile_is_false_on_other_databases(make_engine: MakeEngine) -> None:
    with make_engine("sqlite://").connect() as conn:
        assert not local_infile_enabled(conn)
        table = Table("t", MetaData(), Column("id", Integer))
        with pytest.raises(ConfigurationError, match="MySQL or MariaDB with PyMySQL, not sqlite"):
            load_data(conn, table, ["id"], [(1,)])


# -- warnings: LOAD DATA LOCAL never fails, so load_data does ------------------------------------


def session_state(conn: Connection) -> Row:
    return tuple(
        conn.exec_driver_sql(
            "SELECT @@session.sql_notes, @sqlperf_sql_notes, @sqlperf_1, @sqlperf_2"
        ).one()
    )


@pytest.mark.parametrize("sql_mode", ["STRICT_TRANS_TABLES", ""])
@pytest.mark.parametrize(
    ("column", "bad"),
    [("code", "toolong"), ("n", "12abc"), ("color", "purple"), ("day", "2024-02-30")],
)
def test_a_bad_value_raises_and_the_transaction_takes_the_rows_back(
    mysql_url: str,
    make_engine: MakeEngine,
    sql_mode: str,
    column: str,
    bad: str,
) -> None:
    engine = make_engine(mysql_url, connect_args={"local_infile": True, "sql_mode": sql_mode})
    twins = Twins(engine)
    try:
        loaded, inserted = twins.make(
            Column("code", String(5)),
            Column("n", Integer),
            Column("color", Enum(Color)),
            Column("day", Date),
            Column("blob", LargeBinary),
        )
        good = {"code": "ok", "n": 1, "color": Color.red, "day": datetime.date(2024, 1, 1)}
        rows = [
            (i, *({**good, column: bad} if i == 2 else good).values(), b"\x00") for i in (1, 2, 3)
        ]
        keys = [c.key for c in loaded.c]
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@sql_mode").scalar() == sql_mode
        warning = f"Warning 1265: Data truncated for column '{column}' at row 2"
        with (
            pytest.raises(DataError, match=rf"1 warning\(s\).*{warning}"),
            engine.begin() as conn,
        ):
            load_data(conn, loaded, keys, rows)
        with engine.connect() as conn:  # the same pooled connection
            # the session is as before: notes recorded, no variable holding row data
            assert session_state(conn) == (1, None, None, None)
            assert conn.execute(select(func.count()).select_from(loaded)).scalar() == 0
            conn.rollback()

            # insert() fails (strict) or stores a coerced value with a warning nobody sees
            records = [dict(zip(keys, row, strict=True)) for row in rows]
            if sql_mode:
                with pytest.raises(DBAPIError):  # DataError, or OperationalError for the date
                    conn.execute(insert(inserted), records)
            else:
                conn.execute(insert(inserted), records)
                assert conn.execute(select(func.count()).select_from(inserted)).scalar() == 3
            conn.rollback()
    finally:
        twins.metadata.drop_all(engine)


def test_a_duplicate_key_raises_instead_of_skipping_the_row(twins: Twins, engine: Engine) -> None:
    loaded, _ = twins.make(Column("s", String(5)))
    with engine.begin() as conn:
        load_data(conn, loaded, ["id", "s"], [(1, "a")])
    with (
        pytest.raises(IntegrityError, match="Duplicate entry '1' for key 'PRIMARY'"),
        engine.begin() as conn,
    ):
        load_data(conn, loaded, ["id", "s"], [(2, "b"), (1, "c")])
    assert twins.typed(loaded) == [(1, "a")]


def test_server_errors_propagate_as_sqlalchemy_raises_them(engine: Engine) -> None:
    missing = Table(f"sqlperf_t_{uuid.uuid4().hex[:10]}", MetaData(), Column("b", LargeBinary))
    with engine.connect() as conn:
        with pytest.raises(DBAPIError, match="doesn't exist"):
            load_data(conn, missing, ["b"], [(b"x",)])
        assert session_state(conn)[:2] == (1, None)  # restored after the failure too
        conn.rollback()


def test_notes_are_not_errors_as_in_insert(twins: Twins, engine: Engine) -> None:
    loaded, inserted = twins.make(Column("amount", Numeric(12, 4)), Column("blob", LargeBinary))
    rows: list[Row] = [(1, Decimal("1.23456"), b"x"), (2, Decimal("2.00005"), b"y")]
    twins.fill(loaded, inserted, rows)  # rounded with a Note each, in both
    assert twins.same(loaded, inserted) == [
        (1, Decimal("1.2346"), b"x"),
        (2, Decimal("2.0001"), b"y"),
    ]
    with engine.connect() as conn:
        load_data(conn, loaded, ["id", "amount", "blob"], [(3, Decimal("1.00001"), b"z")])
        assert session_state(conn) == (1, None, None, None)
        conn.rollback()
