"""Opaque, URL-safe cursors for keyset pagination.

A cursor marks the boundary row of a page: it carries the values of the row's
ordering columns, so that the next page is ``WHERE (cols) > (values)``.
:func:`encode_cursor` turns those values into a short string a client sends back;
:func:`decode_cursor` turns it into the same values again, or raises
:class:`~sqlperf.exceptions.InvalidCursor` (a ``ValueError`` whose message is safe
to return in a 400 response).

Format: the token is base64url, without ``=`` padding, of::

    version (1 byte) | flags (1 byte; bit 0: signed) | ordering tag (4 bytes)
    | value count (1 byte) | value ... | HMAC (16 bytes, signed cursors only)

The ordering tag is the first 4 bytes of ``blake2b(ordering)``, so that a cursor
made for another ``ORDER BY`` is refused. With a ``key``, the HMAC-SHA256 of the
whole ordering string and every byte before the HMAC, truncated to 16 bytes, is
checked before any value is read. Each value is a type tag byte and a payload;
numbers are LEB128 varints, zigzag-encoded when they may be negative:

- 0, 1, 2: ``None``, ``False``, ``True`` (no payload); 3 ``int``: any size;
  4 ``float``: 8 bytes IEEE 754 (``-0.0``, ``inf`` and ``nan`` survive);
- 5 ``str`` (UTF-8, lone surrogates kept), 6 ``bytes``: length, then the bytes;
- 7 ``Decimal``: ``kind * 2 + sign`` (kind 0 finite, 1 infinity, 2 NaN, 3 sNaN),
  the exponent if finite, and the digits (length, then ASCII) unless infinite,
  so ``Decimal("1.10")`` keeps its trailing zero;
- 8 ``date``: ``toordinal()``; 9, 10 ``datetime`` naive, aware: microseconds
  since 0001-01-01 of the wall time; 11, 12 ``time`` naive, aware: microseconds
  since midnight; an aware value then has its UTC offset (seconds, then
  microseconds), so it comes back with a fixed-offset :class:`datetime.timezone`
  of exactly that offset (a ``zoneinfo`` zone is not kept, nor ``fold``; so for a
  wall time its zone repeats, ``==`` is False across zones, see PEP 495, though
  the instant is the same);
- 13 ``timedelta``: microseconds; 14 ``uuid.UUID``: its 16 bytes.

Subclasses come back as their base type: an ``IntEnum`` member as a plain ``int``,
a ``StrEnum`` member as a plain ``str``. Any other type is refused.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import hashlib
import hmac
import re
import struct
import uuid
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone

from sqlperf.exceptions import InvalidCursor, PaginationError

__all__ = ["MAX_CURSOR_CHARS", "MAX_VALUES", "decode_cursor", "encode_cursor"]

#: The longest token :func:`decode_cursor` reads (and :func:`encode_cursor` makes).
MAX_CURSOR_CHARS = 4096
#: The most values one cursor carries.
MAX_VALUES = 64

_VERSION = 1
_SIGNED = 0x01
_HEADER = struct.Struct(">BB4sB")  # version, flags, ordering tag, value count
_MAC_SIZE = 16
_TOKEN = re.compile(r"[A-Za-z0-9_-]*")
_US = timedelta(microseconds=1)
_DATETIME_SPAN = (datetime.max - datetime.min) // _US + 1
_DAY_US = 86_400_000_000
_TIMEDELTA_MIN, _TIMEDELTA_MAX = timedelta.min // _US, timedelta.max // _US
_DECIMAL_KINDS = (0, "F", "n", "N")  # as_tuple().exponent of each kind; 0 = finite
_NONE, _FALSE, _TRUE, _INT, _FLOAT, _STR, _BYTES, _DECIMAL = range(8)
_DATE, _DATETIME, _DATETIME_TZ, _TIME, _TIME_TZ, _TIMEDELTA, _UUID = range(8, 15)
_SUPPORTED = (
    "None, bool, int, float, str, bytes, decimal.Decimal, datetime.date, "
    "datetime.datetime, datetime.time, datetime.timedelta, uuid.UUID"
)


def encode_cursor(
    values: Sequence[object], *, ordering: str, key: bytes | str | None = None
) -> str:
    """Encode the ordering-column values of a boundary row as an opaque cursor.

    Args:
        values: the row's values, in ``ORDER BY`` order (at most :data:`MAX_VALUES`).
        ordering: a description of the ``ORDER BY`` the cursor belongs to, e.g.
            ``"orders.created_at DESC, orders.id DESC"``; decoding needs the same string.
        key: an HMAC key (a ``str`` is UTF-8 encoded) to sign the cursor with, so that
            clients cannot forge one; ``None`` for an unsigned cursor.

    Returns:
        A base64url string without padding, of at most :data:`MAX_CURSOR_CHARS` characters.

    Raises:
        PaginationError: a value is of an unsupported type, there are too many
            values, the cursor would be too long, or ``key`` is empty.

    Example::

        >>> token = encode_cursor([42, "bob"], ordering="users.id, users.name")
        >>> decode_cursor(token, ordering="users.id, users.name")
        (42, 'bob')
    """
    if len(values) > MAX_VALUES:
        raise PaginationError(f"a cursor holds at most {MAX_VALUES} values, not {len(values)}")
    mac_key = _mac_key(key)
    flags = _SIGNED if mac_key is not None else 0
    out = bytearray(_HEADER.pack(_VERSION, flags, _ordering_tag(ordering), len(values)))
    for value in values:
        _encode_value(value, out)
    if mac_key is not None:
        out += _mac(mac_key, ordering, bytes(out))
    token = base64.urlsafe_b64encode(out).rstrip(b"=").decode("ascii")
    if len(token) > MAX_CURSOR_CHARS:
        raise PaginationError(
            f"the cursor would be {len(token)} characters, more than {MAX_CURSOR_CHARS}"
        )
    return token


def decode_cursor(
    token: str, *, ordering: str, key: bytes | str | None = None
) -> tuple[object, ...]:
    """Decode a cursor made by :func:`encode_cursor` back into its values.

    Args:
        token: the cursor, as the client sent it back.
        ordering: the same ``ORDER BY`` description the cursor was made with.
        key: the key the cursor was signed with, or ``None`` if it was not signed.

    Returns:
        The values, of the same types as encoded (see the module docstring).

    Raises:
        InvalidCursor: the token is not a string, is malformed, truncated or too
            long, was tampered with, was signed with another key, is signed when no
            key was given (or the other way round), or was made for another ordering.
            Its message never echoes the token or the key.
        PaginationError: ``key`` is empty.

    Example::

        >>> token = encode_cursor([1.5, None], ordering="t.x, t.y", key="secret")
        >>> decode_cursor(token, ordering="t.x, t.y", key="secret")
        (1.5, None)
    """
    mac_key = _mac_key(key)
    if not isinstance(token, str):
        raise InvalidCursor("invalid cursor: must be a string")
    if len(token) > MAX_CURSOR_CHARS:
        raise InvalidCursor("invalid cursor: too long")
    data = _b64decode(token)
    if len(data) < _HEADER.size:
        raise InvalidCursor("invalid cursor: truncated")
    version, flags, tag, count = _HEADER.unpack_from(data)
    if version != _VERSION:
        raise InvalidCursor("invalid cursor: unsupported version")
    if flags not in (0, _SIGNED):
        raise InvalidCursor("invalid cursor: unknown flags")
    if (flags == _SIGNED) != (mac_key is not None):
        raise InvalidCursor(
            "invalid cursor: is not signed"
            if mac_key
            else "invalid cursor: is signed but no key was given"
        )
    if tag != _ordering_tag(ordering):
        raise InvalidCursor("invalid cursor: made for a different ordering")
    if mac_key is not None:
        if len(data) < _HEADER.size + _MAC_SIZE:
            raise InvalidCursor("invalid cursor: truncated")
        data, mac = data[:-_MAC_SIZE], data[-_MAC_SIZE:]
        if not hmac.compare_digest(mac, _mac(mac_key, ordering, data)):
            raise InvalidCursor("invalid cursor: signature does not match")
    if count > MAX_VALUES:
        raise InvalidCursor("invalid cursor: too many values")
    reader = _Reader(data, _HEADER.size)
    values = tuple(reader.value() for _ in range(count))
    if reader.pos != len(data):
        raise InvalidCursor("invalid cursor: trailing bytes")
    return values


def _mac_key(key: bytes | str | None) -> bytes | None:
    if key is None:
        return None
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not raw:
        raise PaginationError("the cursor signing key must not be empty")
    return raw


def _ordering_tag(ordering: str) -> bytes:
    return hashlib.blake2b(ordering.encode("utf-8", "surrogatepass"), digest_size=4).digest()


def _mac(key: bytes, ordering: str, data: bytes) -> bytes:
    text = ordering.encode("utf-8", "surrogatepass")
    message = _varint(len(text)) + text + data
    return hmac.new(key, message, hashlib.sha256).digest()[:_MAC_SIZE]


def _b64decode(token: str) -> bytes:
    if not _TOKEN.fullmatch(token) or len(token) % 4 == 1:
        raise InvalidCursor("invalid cursor: not valid base64url")
    try:
        data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except binascii.Error:
        raise InvalidCursor("invalid cursor: not valid base64url") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=") != token.encode("ascii"):
        raise InvalidCursor("invalid cursor: not valid base64url")  # stray bits at the end
    return data


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint(n << 1 if n >= 0 else (-n << 1) - 1)


def _offset(offset: timedelta | None) -> bytes:
    if offset is None:
        return b""
    seconds, micros = divmod(offset // _US, 1_000_000)
    return _zigzag(seconds) + _varint(micros)


def _in_range(n: int, low: int, high: int) -> int:
    if not low <= n <= high:
        raise InvalidCursor("invalid cursor: value out of range")
    return n


def _encode_value(value: object, out: bytearray) -> None:  # noqa: PLR0912 - one branch a type
    if value is None:
        out.append(_NONE)
    elif isinstance(value, bool):
        out.append(_TRUE if value else _FALSE)
    elif isinstance(value, int):
        if value.bit_length() > 8 * MAX_CURSOR_CHARS:
            raise PaginationError("an int in a cursor is too large")
        out += bytes([_INT]) + _zigzag(int(value))
    elif isinstance(value, float):
        out += bytes([_FLOAT]) + struct.pack(">d", value)
    elif isinstance(value, str):
        raw = str.encode(value, "utf-8", "surrogatepass")
        out += bytes([_STR]) + _varint(len(raw)) + raw
    elif isinstance(value, bytes):
        out += bytes([_BYTES]) + _varint(len(value)) + value
    elif isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        kind = 0 if isinstance(exponent, int) else _DECIMAL_KINDS.index(exponent)
        out += bytes([_DECIMAL]) + _varint(kind * 2 + sign)
        out += _zigzag(exponent) if isinstance(exponent, int) else b""
        if kind != 1:  # infinity has no digits
            out += _varint(len(digits)) + bytes(d + 48 for d in digits)
    elif isinstance(value, datetime):
        offset = value.utcoffset()
        wall = (value.replace(tzinfo=None) - datetime.min) // _US
        out += bytes([_DATETIME if offset is None else _DATETIME_TZ]) + _varint(wall)
        out += _offset(offset)
    elif isinstance(value, date):
        out += bytes([_DATE]) + _varint(value.toordinal())
    elif isinstance(value, time):
        offset = value.utcoffset()
        micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000
        out += bytes([_TIME if offset is None else _TIME_TZ]) + _varint(micros + value.microsecond)
        out += _offset(offset)
    elif isinstance(value, timedelta):
        out += bytes([_TIMEDELTA]) + _zigzag(value // _US)
    elif isinstance(value, uuid.UUID):
        out += bytes([_UUID]) + value.bytes
    else:
        raise PaginationError(
            f"cannot put a value of type {type(value).__qualname__} in a cursor; "
            f"supported types: {_SUPPORTED}"
        )


class _Reader:
    """Reads values from the bytes of one cursor; every read is bounds-checked."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise InvalidCursor("invalid cursor: truncated")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def varint(self) -> int:
        result = shift = 0
        while True:
            byte = self.take(1)[0]
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def offset(self) -> timezone:
        seconds, micros = self.zigzag(), self.varint()
        total = seconds * 1_000_000 + micros
        if micros >= 1_000_000 or not -_DAY_US < total < _DAY_US:
            raise InvalidCursor("invalid cursor: value out of range")
        return timezone(total * _US)

    def value(self) -> object:  # noqa: PLR0911 - one return a type
        tag = self.take(1)[0]
        if tag <= _TRUE:
            return (None, False, True)[tag]
        if tag == _INT:
            return self.zigzag()
        if tag == _FLOAT:
            return float(struct.unpack(">d", self.take(8))[0])
        if tag in (_STR, _BYTES):
            raw = self.take(self.varint())
            if tag == _BYTES:
                return raw
            try:
                return raw.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                raise InvalidCursor("invalid cursor: malformed text") from None
        if tag == _DECIMAL:
            return self.decimal_value()
        if tag == _DATE:
            return date.fromordinal(_in_range(self.varint(), 1, date.max.toordinal()))
        if tag in (_DATETIME, _DATETIME_TZ):
            wall = datetime.min + _in_range(self.varint(), 0, _DATETIME_SPAN - 1) * _US
            return wall.replace(tzinfo=self.offset()) if tag == _DATETIME_TZ else wall
        if tag in (_TIME, _TIME_TZ):
            micros = _in_range(self.varint(), 0, _DAY_US - 1)
            moment = (datetime.min + micros * _US).time()  # the time of day, from 0:00
            return moment.replace(tzinfo=self.offset()) if tag == _TIME_TZ else moment
        if tag == _TIMEDELTA:
            return _in_range(self.zigzag(), _TIMEDELTA_MIN, _TIMEDELTA_MAX) * _US
        if tag == _UUID:
            return uuid.UUID(bytes=self.take(16))
        raise InvalidCursor("invalid cursor: unknown value type")

    def decimal_value(self) -> decimal.Decimal:
        kind, sign = divmod(self.varint(), 2)
        if kind >= len(_DECIMAL_KINDS):
            raise InvalidCursor("invalid cursor: malformed number")
        exponent: int | str = self.zigzag() if kind == 0 else _DECIMAL_KINDS[kind]
        digits = self.take(self.varint()) if kind != 1 else b"0"
        if not (digits.isdigit() or (kind > 1 and not digits)):
            raise InvalidCursor("invalid cursor: malformed number")
        strict = decimal.Context(traps=[decimal.InvalidOperation])  # never a silent NaN
        parts = (sign, tuple(d - 48 for d in digits), exponent)
        try:  # typeshed does not know the exponents "n", "N" and "F" of NaN, sNaN, Infinity
            return decimal.Decimal(parts, strict)  # type: ignore[arg-type]
        except (ArithmeticError, ValueError):
            raise InvalidCursor("invalid cursor: value out of range") from None
