"""prepare_rows and resolve_table: the rows the bulk operations accept, checked and flattened."""

from __future__ import annotations

import datetime
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    Interval,
    MetaData,
    Numeric,
    String,
    Table,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlperf.bulk.rows import Rows, prepare_rows, resolve_table
from sqlperf.exceptions import ConfigurationError


def make_table() -> Table:
    return Table(
        "sqlperf_t",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String),
        Column("score", Float),
        Column("doc", JSON),
        Column("Created", DateTime(timezone=True), key="created"),
    )


TABLE = make_table()


def loose(items: list[Any]) -> list[Any]:
    """Rows of any form, wrong ones included, past the type checker."""
    return items


# -- mappings ---------------------------------------------------------------------------


def test_dicts_in_table_column_order() -> None:
    rows: list[dict[str, Any]] = [
        {"score": 1.5, "id": 1, "name": "a"},
        {"name": "b", "score": None, "id": 2},
    ]
    assert prepare_rows(TABLE, rows) == Rows(
        columns=("id", "name", "score"), values=[(1, "a", 1.5), (2, "b", None)]
    )


def test_dict_values_are_passed_on_unchanged() -> None:
    doc = {"a": [1, 2]}
    out = prepare_rows(TABLE, [{"id": 1, "doc": doc}])
    assert out.values[0][1] is doc


def test_keys_are_column_keys_not_names() -> None:
    at = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    assert prepare_rows(TABLE, [{"created": at}]).columns == ("created",)
    with pytest.raises(ConfigurationError, match="row 0 has column 'Created'"):
        prepare_rows(TABLE, [{"Created": at}])


def test_single_column_dicts() -> None:
    assert prepare_rows(TABLE, [{"id": 1}, {"id": 2}]).values == [(1,), (2,)]


def test_any_mapping_works() -> None:
    class Row(Mapping[str, Any]):  # a Mapping that is not a dict
        def __init__(self, **data: Any) -> None:
            self.data = data

        def __getitem__(self, key: str) -> Any:
            return self.data[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self.data)

        def __len__(self) -> int:
            return len(self.data)

    out = prepare_rows(TABLE, [Row(id=1, name="a"), {"name": "b", "id": 2}])
    assert out.values == [(1, "a"), (2, "b")]


def test_unknown_column_names_row_key_table_and_columns() -> None:
    rows = [{"id": 1, "name": "a"}] * 3 + [{"id": 4, "nmae": "d"}]
    with pytest.raises(
        ConfigurationError,
        match=(
            r"row 3 has column 'nmae', which sqlperf_t has not "
            r"\(its columns: id, name, score, doc, created\)"
        ),
    ):
        prepare_rows(TABLE, rows)
    with pytest.raises(ConfigurationError, match="row 0 has column 'nope'"):
        prepare_rows(TABLE, [{"nope": 1}])


def test_unknown_column_of_a_wide_table_lists_the_first_twenty() -> None:
    wide = Table("wide", MetaData(), *(Column(f"c{i}", Integer) for i in range(30)))
    with pytest.raises(ConfigurationError) as caught:
        prepare_rows(wide, [{"x": 1}])
    message = str(caught.value)
    assert "c19, ... (30 in all)" in message
    assert "c20" not in message


def test_unknown_column_of_a_schema_table_names_it_fully() -> None:
    t = Table("t", MetaData(), Column("id", Integer), schema="app")
    with pytest.raises(ConfigurationError, match=r"which app\.t has not"):
        prepare_rows(t, [{"idd": 1}])


def test_rows_of_different_shapes() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"rows of different shapes: compared with row 0, row 2 lacks name;",
    ):
        prepare_rows(TABLE, loose([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3}]))
    with pytest.raises(ConfigurationError, match=r"row 1 lacks name and has score too"):
        prepare_rows(TABLE, loose([{"id": 1, "name": "a"}, {"id": 2, "score": 1.0}]))
    with pytest.raises(ConfigurationError, match=r"row 1 has score too"):
        prepare_rows(TABLE, loose([{"id": 1}, {"id": 2, "score": 1.0}]))


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="row 0 has column 1 of type int"):
        prepare_rows(TABLE, loose([{1: "a"}]))


def test_an_empty_dict_row_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="row 0 has no columns"):
        prepare_rows(TABLE, [{}])


# -- sequences --------------------------------------------------------------------------


def test_tuples_fill_the_first_columns() -> None:
    assert prepare_rows(TABLE, [(1, "a"), [2, "b"]]) == Rows(
        columns=("id", "name"), values=[(1, "a"), (2, "b")]
    )
    full = prepare_rows(TABLE, [(1, "a", 1.0, None, None)])
    assert full.columns == ("id", "name", "score", "doc", "created")


def test_tuple_rows_are_kept_and_lists_become_tuples() -> None:
    row = (1, "a")
    out = prepare_rows(TABLE, [row, [2, "b"]])
    assert out.values[0] is row
    assert type(out.values[1]) is tuple


def test_wrong_tuple_length_names_the_row() -> None:
    with pytest.raises(ConfigurationError, match="row 2 has 1 values but row 0 has 2"):
        prepare_rows(TABLE, [(1, "a"), (2, "b"), (3,)])
    with pytest.raises(ConfigurationError, match="row 0 has 6 values but sqlperf_t has only 5"):
        prepare_rows(TABLE, [(1, 2, 3, 4, 5, 6)])
    with pytest.raises(ConfigurationError, match="row 0 is empty"):
        prepare_rows(TABLE, [()])


def test_mixed_inputs() -> None:
    with pytest.raises(ConfigurationError, match="row 1 is a tuple but row 0 is a mapping"):
        prepare_rows(TABLE, loose([{"id": 1}, (2,)]))
    with pytest.raises(ConfigurationError, match="row 1 is a dict but row 0 is a sequence"):
        prepare_rows(TABLE, loose([(1,), {"id": 2}]))
    with pytest.raises(ConfigurationError, match="row 1 is a str but row 0 is a sequence"):
        prepare_rows(TABLE, [(1,), "2"])


def test_rows_that_are_not_rows() -> None:
    with pytest.raises(ConfigurationError, match="row 0 is a int"):
        prepare_rows(TABLE, loose([1, 2]))
    with pytest.raises(ConfigurationError, match="row 0 is a str"):
        prepare_rows(TABLE, ["ab"])
    with pytest.raises(ConfigurationError, match="got a single dict; wrap one row in a list"):
        prepare_rows(TABLE, {"id": 1})


# -- required, generators, empty input ----------------------------------------------------


def test_required_columns() -> None:
    rows = [{"name": "a"}]
    with pytest.raises(ConfigurationError, match="the rows have no column 'id', which is required"):
        prepare_rows(TABLE, rows, required=["id"])
    with pytest.raises(
        ConfigurationError, match="the rows have no column 'id', which the key needs"
    ):
        prepare_rows(TABLE, rows, required=["id"], required_for="the key")
    with pytest.raises(ConfigurationError, match="no column 'score'"):
        prepare_rows(TABLE, [(1, "a")], required=("id", "score"))
    with pytest.raises(ConfigurationError, match="required column 'ident' is not a column"):
        prepare_rows(TABLE, [{"id": 1}], required=["ident"])
    assert prepare_rows(TABLE, [{"id": 1}], required="id").columns == ("id",)


def test_generator_input_is_consumed_once() -> None:
    consumed = []

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(3):
            consumed.append(i)
            yield {"id": i, "name": str(i)}

    out = prepare_rows(TABLE, rows())
    assert out.values == [(0, "0"), (1, "1"), (2, "2")]
    assert consumed == [0, 1, 2]


def test_empty_input() -> None:
    empty = Rows(columns=(), values=[])
    assert prepare_rows(TABLE, []) == empty
    assert prepare_rows(TABLE, ()) == empty
    assert prepare_rows(TABLE, iter([])) == empty
    assert prepare_rows(TABLE, [], required=["id"]) == empty


def test_rows_are_immutable() -> None:
    out = prepare_rows(TABLE, [(1,)])
    with pytest.raises(AttributeError):
        out.columns = ("name",)  # type: ignore[misc]


def test_pandas_is_not_imported_for_plain_rows() -> None:
    code = (
        "import sys; from sqlperf.bulk.rows import prepare_rows; "
        "from sqlalchemy import Column, Integer, MetaData, Table; "
        "t = Table('t', MetaData(), Column('id', Integer)); "
        "prepare_rows(t, [{'id': 1}]); prepare_rows(t, [(1,)]); "
        "assert 'pandas' not in sys.modules and 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- ORM models ---------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "sqlperf_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Admin(User):
    __tablename__ = "sqlperf_admins"
    id: Mapped[int] = mapped_column(ForeignKey(User.id), primary_key=True)
    level: Mapped[int]


class Abstract(Base):
    __abstract__ = True


def test_resolve_table() -> None:
    assert resolve_table(TABLE) is TABLE
    assert resolve_table(User) is User.__table__
    assert resolve_table(Admin).name == "sqlperf_admins"  # its own table of the hierarchy
    from sqlalchemy import inspect

    assert resolve_table(inspect(User)) is User.__table__
    out = prepare_rows(resolve_table(User), [{"name": "a", "id": 1}])
    assert out.columns == ("id", "name")


def test_resolve_table_refuses_the_rest() -> None:
    with pytest.raises(ConfigurationError, match="pass the class User, not an instance"):
        resolve_table(User(id=1, name="a"))
    with pytest.raises(ConfigurationError, match="expected a sqlalchemy Table or an ORM"):
        resolve_table("sqlperf_users")
    with pytest.raises(ConfigurationError, match="expected a sqlalchemy Table or an ORM"):
        resolve_table(Abstract)
    with pytest.raises(ConfigurationError, match="expected a sqlalchemy Table or an ORM"):
        resolve_table(int)


def test_resolve_table_refuses_classes_mapped_to_a_select() -> None:
    class Other(DeclarativeBase):
        pass

    class Report(Other):
        __table__ = select(User.__table__.c.id, User.__table__.c.name).subquery()

    with pytest.raises(ConfigurationError, match="Report is mapped to Subquery, not to a Table"):
        resolve_table(Report)


# -- pandas DataFrames --------------------------------------------------------------------


@pytest.fixture
def pd() -> Any:
    return pytest.importorskip("pandas")


@pytest.fixture
def np() -> Any:
    return pytest.importorskip("numpy")


def frame_table() -> Table:
    return Table(
        "frames",
        MetaData(),
        Column("id", BigInteger),
        Column("count", Integer),
        Column("ratio", Float),
        Column("label", String),
        Column("at", DateTime(timezone=True)),
        Column("naive", DateTime),
        Column("span", Interval),
        Column("doc", JSON),
        Column("amount", Numeric),
        Column("flag", Integer),
    )


def test_frame_numpy_types_become_plain_python(pd: Any, np: Any) -> None:
    t = frame_table()
    df = pd.DataFrame(
        {
            "ratio": np.array([0.5, 1.25]),
            "id": np.array([1, 2], dtype="int64"),
            "flag": np.array([True, False]),
            "count": np.array([7, 8], dtype="uint16"),
        }
    )
    out = prepare_rows(t, df)
    assert out.columns == ("id", "count", "ratio", "flag")  # the table's order
    assert out.values == [(1, 7, 0.5, True), (2, 8, 1.25, False)]
    for row in out.values:
        assert [type(v) for v in row] == [int, int, float, bool]


def test_frame_ints_with_nan_come_back_as_ints_in_integer_columns(pd: Any, np: Any) -> None:
    t = frame_table()
    df = pd.DataFrame({"count": [1, None, 3], "ratio": [1.0, None, 3.0]})
    assert df["count"].dtype == np.float64  # pandas' float64 problem
    out = prepare_rows(t, df)
    assert out.values == [(1, 1.0), (None, None), (3, 3.0)]
    assert [type(row[0]) for row in out.values] == [int, type(None), int]
    assert [type(row[1]) for row in out.values] == [float, type(None), float]  # Float column


def test_frame_non_whole_floats_in_integer_columns_stay_floats(pd: Any, np: Any) -> None:
    out = prepare_rows(frame_table(), pd.DataFrame({"count": [1.0, 2.5, np.nan]}))
    assert out.values == [(1.0,), (2.5,), (None,)]
    assert type(out.values[0][0]) is float


def test_frame_nullable_extension_types(pd: Any, np: Any) -> None:
    t = frame_table()
    df = pd.DataFrame(
        {
            "id": pd.array([1, None], dtype="Int64"),
            "ratio": pd.array([0.5, None], dtype="Float64"),
            "label": pd.array(["a", None], dtype="string"),
            "flag": pd.array([True, None], dtype="boolean"),
        }
    )
    out = prepare_rows(t, df)
    assert out.values == [(1, 0.5, "a", True), (None, None, None, None)]
    assert [type(v) for v in out.values[0]] == [int, float, str, bool]


def test_frame_strings_and_objects_stay_as_they_are(pd: Any, np: Any) -> None:
    t = frame_table()
    doc = {"a": [1, 2]}
    df = pd.DataFrame(
        {
            "label": ["x", None, "z"],
            "doc": [doc, [1, 2], None],
            "amount": [Decimal("1.10"), None, Decimal("NaN")],
        }
    )
    out = prepare_rows(t, df)
    assert out.values[0] == ("x", doc, Decimal("1.10"))
    assert out.values[0][1] is doc
    assert out.values[1] == (None, [1, 2], None)
    assert out.values[2][0] == "z"
    assert out.values[2][1] is None
    assert out.values[2][2] is None  # pandas counts Decimal("NaN") as missing, like float NaN


def test_frame_missing_values_become_none(pd: Any, np: Any) -> None:
    t = frame_table()
    df = pd.DataFrame(
        {
            "label": pd.Series(["a", np.nan, pd.NA, None], dtype=object),
            "ratio": [np.nan, 1.0, np.nan, 2.0],
            "naive": pd.to_datetime(["2024-01-01", None, "2024-01-03", None]),
            "span": pd.to_timedelta(["1 day", None, "2s", None]),
        }
    )
    out = prepare_rows(t, df)
    assert [row[0] for row in out.values] == [None, 1.0, None, 2.0]
    assert [row[1] for row in out.values] == ["a", None, None, None]
    assert out.values[1][2] is None
    assert out.values[3][2] is None
    assert out.values[1][3] is None


def test_frame_datetimes_and_nat(pd: Any, np: Any) -> None:
    t = frame_table()
    df = pd.DataFrame(
        {
            "naive": pd.to_datetime(["2024-01-01 12:00:00.123456789", None]),
            "span": pd.to_timedelta(["1 day 2s 3us", None]),
        }
    )
    out = prepare_rows(t, df)
    naive, span = out.values[0]
    assert type(naive) is datetime.datetime
    assert naive == datetime.datetime(2024, 1, 1, 12, 0, 0, 123456)  # nanoseconds truncated
    assert type(span) is datetime.timedelta
    assert span == datetime.timedelta(days=1, seconds=2, microseconds=3)
    assert out.values[1] == (None, None)


def test_frame_tz_aware_datetimes_keep_their_zone(pd: Any, np: Any) -> None:
    t = frame_table()
    paris = pd.to_datetime(["2024-07-01 10:00", None]).tz_localize("Europe/Paris")
    utc = pd.to_datetime(["2024-07-01 10:00:00.5", "2024-07-02 00:00:00.0"], utc=True)
    out = prepare_rows(t, pd.DataFrame({"at": paris, "naive": utc}))
    at, naive = out.values[0]
    assert type(at) is datetime.datetime
    assert at == datetime.datetime(2024, 7, 1, 10, tzinfo=ZoneInfo("Europe/Paris"))
    assert at.utcoffset() == datetime.timedelta(hours=2)
    assert naive == datetime.datetime(2024, 7, 1, 10, 0, 0, 500000, tzinfo=datetime.timezone.utc)
    assert naive.utcoffset() == datetime.timedelta(0)
    assert out.values[1][0] is None


def test_frame_scalars_in_object_columns_become_plain_python(pd: Any, np: Any) -> None:
    t = frame_table()
    df = pd.DataFrame(
        {
            "doc": pd.Series(
                [
                    np.int64(1),
                    np.float64(2.5),
                    np.bool_(True),
                    np.datetime64("2024-01-01T00:00:00.000001"),
                    np.timedelta64(5, "s"),
                    pd.Timestamp("2024-01-02", tz="UTC"),
                    pd.Timedelta("1h"),
                    pd.NaT,
                    uuid.UUID(int=1),
                ],
                dtype=object,
            )
        }
    )
    got = [row[0] for row in prepare_rows(t, df).values]
    assert got == [
        1,
        2.5,
        True,
        datetime.datetime(2024, 1, 1, 0, 0, 0, 1),
        datetime.timedelta(seconds=5),
        datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
        datetime.timedelta(hours=1),
        None,
        uuid.UUID(int=1),
    ]
    assert [type(v) for v in got[:7]] == [
        int,
        float,
        bool,
        datetime.datetime,
        datetime.timedelta,
        datetime.datetime,
        datetime.timedelta,
    ]


def test_frame_categorical_column(pd: Any, np: Any) -> None:
    df = pd.DataFrame({"label": pd.Categorical(["a", "b", None])})
    assert prepare_rows(frame_table(), df).values == [("a",), ("b",), (None,)]


def test_frame_index_is_ignored(pd: Any, np: Any) -> None:
    df = pd.DataFrame({"id": [1, 2]}, index=["x", "y"])
    assert prepare_rows(frame_table(), df).values == [(1,), (2,)]


def test_frame_column_checks(pd: Any, np: Any) -> None:
    t = frame_table()
    with pytest.raises(ConfigurationError, match="the DataFrame has column 'nmae', which frames"):
        prepare_rows(t, pd.DataFrame({"id": [1], "nmae": ["a"]}))
    with pytest.raises(ConfigurationError, match="the DataFrame has column 0 of type int"):
        prepare_rows(t, pd.DataFrame([[1, 2]]))
    dup = pd.DataFrame([[1, 2]], columns=["id", "id"])
    with pytest.raises(ConfigurationError, match="the DataFrame has column 'id' more than once"):
        prepare_rows(t, dup)
    with pytest.raises(ConfigurationError, match="no column 'count', which the key needs"):
        prepare_rows(t, pd.DataFrame({"id": [1]}), required=["count"], required_for="the key")


def test_empty_frames(pd: Any, np: Any) -> None:
    t = frame_table()
    assert prepare_rows(t, pd.DataFrame()) == Rows(columns=(), values=[])
    assert prepare_rows(t, pd.DataFrame({"id": []})) == Rows(columns=(), values=[])
    with pytest.raises(ConfigurationError, match="has rows but no columns"):
        prepare_rows(t, pd.DataFrame(index=[0, 1]))


def test_frame_arrow_backed_columns(pd: Any, np: Any) -> None:
    pa = pytest.importorskip("pyarrow")
    t = frame_table()
    at = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    df = pd.DataFrame(
        {
            "id": pd.array([1, None], dtype="int64[pyarrow]"),
            "at": pd.array([at, None], dtype=pd.ArrowDtype(pa.timestamp("us", tz="UTC"))),
            "label": pd.array(["x", None], dtype="string[pyarrow]"),
            "naive": pd.array(
                [datetime.datetime(2024, 1, 1), None], dtype="timestamp[ns][pyarrow]"
            ),
        }
    )
    out = prepare_rows(t, df)
    assert out.values == [(1, "x", at, datetime.datetime(2024, 1, 1)), (None, None, None, None)]
    assert [type(v) for v in out.values[0]] == [int, str, datetime.datetime, datetime.datetime]
