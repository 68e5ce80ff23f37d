"""Keyset pagination cursors: exact round trips, tamper resistance, safe errors."""

from __future__ import annotations

import base64
import decimal
import doctest
import enum
import math
import re
import uuid
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlperf.exceptions import InvalidCursor, PaginationError
from sqlperf.pagination import cursor as cursor_module
from sqlperf.pagination.cursor import MAX_CURSOR_CHARS, MAX_VALUES, decode_cursor, encode_cursor

ORDERING = "orders.created_at DESC NULLS LAST, orders.id DESC"
KEY = "s3cret-signing-key"
URL_SAFE = re.compile(r"[A-Za-z0-9_-]*")


def tz(**kwargs: float) -> timezone:
    return timezone(timedelta(**kwargs))


EDGE_VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    63,
    64,
    -64,
    -65,
    127,
    128,
    2**63 - 1,
    -(2**63),
    2**64,
    2**64 + 1,
    -(2**100),
    10**300,
    0.0,
    -0.0,
    1.0,
    -1.5,
    1e308,
    5e-324,
    math.inf,
    -math.inf,
    math.nan,
    "",
    "a",
    "héllo wörld",
    "😀 astral 𝄞",
    "\x00nul",
    "\ud800 lone surrogate",
    "x" * 1000,
    b"",
    b"\x00\xff",
    bytes(range(256)),
    Decimal("0"),
    Decimal("-0"),
    Decimal("1.10"),
    Decimal("0.00"),
    Decimal("1E+3"),
    Decimal("-1.5E-7"),
    Decimal("12345678901234567890.123456789012345678901234567890"),
    Decimal("1E+999999999999999999"),
    Decimal("NaN"),
    Decimal("-NaN"),
    Decimal("NaN123"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    date.min,
    date.max,
    date(2024, 2, 29),
    datetime.min,
    datetime.max,
    datetime(2024, 5, 6, 7, 8, 9, 123456),
    datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),
    datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=tz(hours=5, minutes=45)),
    datetime(2024, 5, 6, 7, 8, 9, tzinfo=tz(hours=-3, minutes=-30)),
    datetime(1900, 1, 1, tzinfo=tz(minutes=19, seconds=32)),
    datetime(2024, 1, 1, tzinfo=tz(seconds=-1, microseconds=-7)),
    datetime(2024, 1, 1, tzinfo=tz(hours=23, minutes=59, seconds=59, microseconds=999999)),
    datetime(2024, 1, 1, tzinfo=tz(hours=-23, minutes=-59, seconds=-59, microseconds=-999999)),
    datetime.min.replace(tzinfo=tz(hours=14)),
    datetime.max.replace(tzinfo=tz(hours=-12)),
    datetime(1937, 1, 1, tzinfo=ZoneInfo("Europe/Amsterdam")),
    time.min,
    time.max,
    time(12, 34, 56, 789),
    time(12, 34, tzinfo=timezone.utc),
    time(23, 59, 59, 999999, tzinfo=tz(hours=5, minutes=45)),
    time(0, 0, tzinfo=tz(hours=-9, minutes=-30, seconds=-15)),
    timedelta(0),
    timedelta.min,
    timedelta.max,
    timedelta(microseconds=-1),
    timedelta(days=-1, seconds=5),
    uuid.UUID(int=0),
    uuid.UUID(int=2**128 - 1),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
]


def assert_same(out: object, expected: object) -> None:
    """Equal value and the very same type, with the edge cases ``==`` misses."""
    assert type(out) is type(expected)
    if isinstance(expected, float) and math.isnan(expected):
        assert isinstance(out, float)
        assert math.isnan(out)
    elif isinstance(expected, float):
        assert isinstance(out, float)
        assert out == expected
        assert math.copysign(1, out) == math.copysign(1, expected)
    elif isinstance(expected, Decimal):  # as_tuple: sign of zero, trailing zeros, NaN payload
        assert isinstance(out, Decimal)
        assert out.as_tuple() == expected.as_tuple()
    elif isinstance(expected, (datetime, time)):
        assert isinstance(out, (datetime, time))
        assert out.utcoffset() == expected.utcoffset()
        assert out.replace(tzinfo=None) == expected.replace(tzinfo=None)
        if isinstance(out, datetime) and isinstance(expected, datetime) and out.tzinfo:
            assert out - expected == timedelta(0)  # `==` is False for a repeated wall time
        else:
            assert out == expected
    else:
        assert out == expected


def assert_round_trip(values: Sequence[object], key: str | bytes | None = None) -> str:
    token = encode_cursor(values, ordering=ORDERING, key=key)
    assert URL_SAFE.fullmatch(token)
    decoded = decode_cursor(token, ordering=ORDERING, key=key)
    assert len(decoded) == len(values)
    for out, expected in zip(decoded, values, strict=True):
        assert_same(out, expected)
    return token


def raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def token_of(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def vi(n: int) -> bytes:
    """``n`` as a LEB128 varint, written independently of the module under test."""
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def zz(n: int) -> bytes:
    return vi(2 * n if n >= 0 else -2 * n - 1)


def header(count: int, ordering: str = ORDERING) -> bytes:
    """The header of an unsigned cursor of ``count`` values, taken from a real one."""
    data = bytearray(raw(encode_cursor([], ordering=ordering)))
    data[-1] = count
    return bytes(data)


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY, b"\x00binary key"])
@pytest.mark.parametrize("value", EDGE_VALUES, ids=repr)
def test_every_supported_type_round_trips_exactly(value: object, key: str | bytes | None):
    assert_round_trip([value], key=key)


@pytest.mark.parametrize("key", [None, KEY])
def test_cursors_mixing_types_round_trip(key: str | None):
    assert_round_trip(EDGE_VALUES[:MAX_VALUES], key=key)
    assert_round_trip(EDGE_VALUES[MAX_VALUES:], key=key)
    assert_round_trip([datetime(2024, 5, 6, tzinfo=timezone.utc), 42], key=key)
    assert_round_trip([], key=key)


def test_a_zoneinfo_datetime_comes_back_with_a_fixed_offset():
    value = datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Asia/Kathmandu"))
    (out,) = decode_cursor(encode_cursor([value], ordering=ORDERING), ordering=ORDERING)
    assert out == value
    assert isinstance(out, datetime)
    assert out.tzinfo == timezone(timedelta(hours=5, minutes=45))


def test_a_repeated_wall_time_keeps_its_instant_and_offset():
    value = datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York"))
    (out,) = decode_cursor(encode_cursor([value], ordering=ORDERING), ordering=ORDERING)
    assert isinstance(out, datetime)
    assert out.tzinfo == timezone(timedelta(hours=-5))  # EST, the second 1:30
    assert out != value  # PEP 495: an ambiguous time is unequal to any other zone's ...
    assert out - value == timedelta(0)  # ... though it is the same instant
    assert out.timestamp() == value.timestamp()


def test_subclasses_come_back_as_their_base_type():
    class Priority(enum.IntEnum):
        HIGH = 3

    class Color(str, enum.Enum):
        RED = "red"

    token = encode_cursor([Priority.HIGH, Color.RED], ordering=ORDERING)
    out = decode_cursor(token, ordering=ORDERING)
    assert out == (3, "red")
    assert [type(v) for v in out] == [int, str]


def test_bools_and_whole_floats_keep_their_type():
    out = decode_cursor(encode_cursor([True, 1, 1.0, False, 0], ordering="o"), ordering="o")
    assert [type(v) for v in out] == [bool, int, float, bool, int]


def test_cursors_are_compact_and_url_safe():
    row = [datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=tz(hours=5, minutes=45)), 123456789]
    token = encode_cursor(row, ordering=ORDERING)
    assert len(token) < 40
    assert URL_SAFE.fullmatch(token)
    assert len(encode_cursor([42], ordering=ORDERING)) < 16
    assert len(encode_cursor(row, ordering=ORDERING, key=KEY)) < 60


def test_a_str_key_is_its_utf8_bytes():
    token = encode_cursor([1], ordering=ORDERING, key="clé")
    assert decode_cursor(token, ordering=ORDERING, key="clé".encode()) == (1,)


def test_a_decimal_decodes_the_same_under_any_decimal_context():
    values = [Decimal("1.10"), Decimal("1E+999999999999999999"), Decimal("sNaN")]
    token = encode_cursor(values, ordering=ORDERING)
    with decimal.localcontext() as ctx:
        ctx.prec, ctx.capitals, ctx.traps[decimal.InvalidOperation] = 3, 0, False
        assert_round_trip(values)
        assert encode_cursor(values, ordering=ORDERING) == token


def test_docstring_examples_run():
    assert doctest.testmod(cursor_module).failed == 0


# -- hypothesis ----------------------------------------------------------------------------

offsets = st.timedeltas(
    min_value=timedelta(hours=-24) + timedelta(microseconds=1),
    max_value=timedelta(hours=24) - timedelta(microseconds=1),
).map(timezone)
zones = st.one_of(st.none(), offsets, st.timezones())
supported_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.decimals(),
    st.dates(),
    st.datetimes(timezones=zones),
    st.times(timezones=st.one_of(st.none(), offsets)),
    st.timedeltas(),
    st.uuids(),
)


@settings(deadline=None)
@given(values=st.lists(supported_values, max_size=8), signed=st.booleans())
def test_any_supported_values_round_trip(values: list[object], signed: bool):
    assert_round_trip(values, key=KEY if signed else None)


@settings(deadline=None)
@given(token=st.text(max_size=200), signed=st.booleans())
def test_random_text_decodes_or_raises_invalid_cursor(token: str, signed: bool):
    try:
        out = decode_cursor(token, ordering=ORDERING, key=KEY if signed else None)
    except InvalidCursor:
        return
    assert isinstance(out, tuple)


@settings(deadline=None)
@given(data=st.binary(max_size=300), signed=st.booleans(), with_header=st.booleans())
def test_random_bytes_decode_or_raise_invalid_cursor(data: bytes, signed: bool, with_header: bool):
    if with_header and data:  # a valid header sends the random bytes on to the value parser
        data = header(data[0] % (MAX_VALUES + 2)) + data[1:]
    try:
        out = decode_cursor(token_of(data), ordering=ORDERING, key=KEY if signed else None)
    except InvalidCursor:
        return
    assert isinstance(out, tuple)
    assert not signed


# -- tampering -----------------------------------------------------------------------------


SAMPLE = [datetime(2024, 5, 6, 7, 8, 9, tzinfo=tz(hours=2)), 42, "abc", Decimal("9.99")]


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_byte_of_a_signed_cursor_is_detected(mask: int):
    data = raw(encode_cursor(SAMPLE, ordering=ORDERING, key=KEY))
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= mask
        with pytest.raises(InvalidCursor):
            decode_cursor(token_of(bytes(tampered)), ordering=ORDERING, key=KEY)


@pytest.mark.parametrize("key", [None, KEY])
def test_every_truncation_is_rejected(key: str | None):
    token = encode_cursor(SAMPLE, ordering=ORDERING, key=key)
    data = raw(token)
    for n in range(len(data)):
        with pytest.raises(InvalidCursor):
            decode_cursor(token_of(data[:n]), ordering=ORDERING, key=key)
    for n in range(len(token)):
        with pytest.raises(InvalidCursor):
            decode_cursor(token[:n], ordering=ORDERING, key=key)


@pytest.mark.parametrize("key", [None, KEY])
def test_a_cursor_for_another_ordering_is_rejected(key: str | None):
    token = encode_cursor(SAMPLE, ordering=ORDERING, key=key)
    with pytest.raises(InvalidCursor, match="different ordering"):
        decode_cursor(token, ordering="orders.id ASC", key=key)


def test_wrong_missing_or_unexpected_keys_are_rejected():
    signed = encode_cursor(SAMPLE, ordering=ORDERING, key=KEY)
    unsigned = encode_cursor(SAMPLE, ordering=ORDERING)
    with pytest.raises(InvalidCursor, match="signature does not match"):
        decode_cursor(signed, ordering=ORDERING, key="another key")
    with pytest.raises(InvalidCursor, match="is signed but no key was given"):
        decode_cursor(signed, ordering=ORDERING)
    with pytest.raises(InvalidCursor, match="is not signed"):
        decode_cursor(unsigned, ordering=ORDERING, key=KEY)


def test_the_signature_is_checked_before_any_value_is_read():
    data = bytearray(header(1) + b"\xfe" + bytes(16))  # an unknown value type
    data[1] = 1  # the signed flag
    with pytest.raises(InvalidCursor, match="signature does not match"):
        decode_cursor(token_of(bytes(data)), ordering=ORDERING, key=KEY)
    with pytest.raises(InvalidCursor, match="unknown value type"):
        decode_cursor(token_of(header(1) + b"\xfe"), ordering=ORDERING)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not a cursor!", "not valid base64url"),
        ("AQ+/", "not valid base64url"),
        ("AQA=", "not valid base64url"),
        ("A", "not valid base64url"),
        ("AB", "not valid base64url"),  # stray bits after the last byte
        ("", "truncated"),
        ("A" * (MAX_CURSOR_CHARS + 1), "too long"),
        (token_of(b"\x02" + header(0)[1:]), "unsupported version"),
        (token_of(b"\x01\x02" + header(0)[2:]), "unknown flags"),
        (token_of(header(MAX_VALUES + 1)), "too many values"),
        (token_of(header(0) + b"\x00"), "trailing bytes"),
        (token_of(header(1) + b"\x05\x02\xff\xfe"), "malformed text"),
        (token_of(header(1) + b"\x07\x08"), "malformed number"),
        (token_of(header(1) + b"\x07\x00\x00\x02\x31\x78"), "malformed number"),
        (token_of(header(1) + b"\x07\x00\x00\x00"), "malformed number"),
        (token_of(header(1) + b"\x07\x00" + zz(10**18) + b"\x01\x31"), "out of range"),
        (token_of(header(1) + b"\x07\x00" + zz(-(2**80)) + b"\x01\x31"), "out of range"),
        (token_of(header(1) + b"\x08\x00"), "out of range"),
        (token_of(header(1) + b"\x08" + vi(date.max.toordinal() + 1)), "out of range"),
        (token_of(header(1) + b"\x09" + vi(2**70)), "out of range"),
        (token_of(header(1) + b"\x0a\x00" + zz(86_400) + b"\x00"), "out of range"),
        (token_of(header(1) + b"\x0a\x00" + zz(-86_400) + b"\x00"), "out of range"),
        (token_of(header(1) + b"\x0a\x00\x00" + vi(10**6)), "out of range"),
        (token_of(header(1) + b"\x0b" + vi(86_400 * 10**6)), "out of range"),
        (
            token_of(header(1) + b"\x0d" + zz(timedelta.max // timedelta(microseconds=1) + 1)),
            "range",
        ),
        (
            token_of(header(1) + b"\x0d" + zz(timedelta.min // timedelta(microseconds=1) - 1)),
            "range",
        ),
        (token_of(header(1) + b"\x03" + b"\xff" * 50), "truncated"),
        (token_of(header(1) + b"\x05\xff\xff\xff\xff\x7f"), "truncated"),
        (token_of(header(1) + b"\x0e" + bytes(15)), "truncated"),
    ],
)
def test_malformed_cursors_get_a_short_safe_message(token: str, message: str):
    with pytest.raises(InvalidCursor, match=message) as info:
        decode_cursor(token, ordering=ORDERING)
    assert str(info.value).startswith("invalid cursor: ")
    assert len(str(info.value)) < 60


def test_messages_never_echo_the_cursor_or_the_key():
    token = encode_cursor(["PRIVATE"], ordering=ORDERING, key=KEY)
    for kwargs in ({"ordering": "other"}, {"ordering": ORDERING, "key": "wrong"}, {}):
        with pytest.raises(InvalidCursor) as info:
            decode_cursor(token, **{"ordering": ORDERING, **kwargs})
        message = str(info.value)
        assert token not in message
        assert "PRIVATE" not in message
        assert KEY not in message


@pytest.mark.parametrize("token", [None, b"AQA", 42, ["AQA"]])
def test_a_token_that_is_not_a_string_is_invalid(token: object):
    with pytest.raises(InvalidCursor, match="must be a string"):
        decode_cursor(token, ordering=ORDERING)  # type: ignore[arg-type]


def test_invalid_cursor_is_a_value_error():
    with pytest.raises(ValueError, match="invalid cursor") as info:
        decode_cursor("garbage!", ordering=ORDERING)
    assert isinstance(info.value, InvalidCursor)
    assert isinstance(info.value, PaginationError)


# -- what encode_cursor refuses ---------------------------------------------------------


class Plain(enum.Enum):
    A = 1


@pytest.mark.parametrize(
    ("value", "name"),
    [(object(), "object"), ([1], "list"), ({"a": 1}, "dict"), (1j, "complex"), (Plain.A, "Plain")],
)
def test_an_unsupported_type_is_refused_by_name(value: object, name: str):
    with pytest.raises(PaginationError, match=rf"type {name} .*supported types: None, bool"):
        encode_cursor([1, value], ordering=ORDERING)


def test_too_many_values_or_too_long_a_cursor_is_refused():
    with pytest.raises(PaginationError, match="at most 64 values"):
        encode_cursor([1] * (MAX_VALUES + 1), ordering=ORDERING)
    with pytest.raises(PaginationError, match="more than 4096"):
        encode_cursor(["x" * MAX_CURSOR_CHARS], ordering=ORDERING)
    with pytest.raises(PaginationError, match="too large"):
        encode_cursor([10**20000], ordering=ORDERING)
    assert_round_trip([1] * MAX_VALUES)
    assert_round_trip(["x" * 3000])


def test_an_empty_key_is_a_configuration_mistake():
    with pytest.raises(PaginationError, match="must not be empty"):
        encode_cursor([1], ordering=ORDERING, key="")
    with pytest.raises(PaginationError, match="must not be empty"):
        decode_cursor("AQA", ordering=ORDERING, key=b"")
