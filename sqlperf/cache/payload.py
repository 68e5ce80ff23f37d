"""Cached payloads: rows as plain data, optionally HMAC-signed.

An entry is the cursor's description (column names and type codes) and its
rows as tuples of plain values, pickled. Nothing of the ORM is stored: a hit is
replayed through SQLAlchemy's own result processing, which builds (or finds in
the session) the entities, so a payload stays small and fast to read.

Whoever can write to the store must not be able to make the application run
code: payloads are unpickled by an unpickler that only knows plain data types,
and with a signing key an entry whose signature fails is never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import pickle
from collections.abc import Sequence
from typing import Any

__all__ = ["BadPayload", "PayloadCodec", "Rows"]

#: (description, rows): what a cached result is.
Rows = tuple[tuple[tuple[Any, ...], ...], list[tuple[Any, ...]]]

_MAC_SIZE = 32

# Only plain data may come out of a cached payload, whoever wrote it.
_SAFE_GLOBALS = {
    ("builtins", name)
    for name in ("tuple", "list", "dict", "set", "frozenset", "bytearray", "complex", "slice")
} | {
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("uuid", "UUID"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
}


class BadPayload(Exception):
    """A payload failed its signature or held something other than plain data."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a cached result")
        return super().find_class(module, name)


class PayloadCodec:
    """Encode and decode cached rows.

    Args:
        signing_key: if given, payloads carry an HMAC-SHA256 of their content.
    """

    def __init__(self, signing_key: bytes | str | None = None) -> None:
        self._key = signing_key.encode() if isinstance(signing_key, str) else signing_key

    def encode(self, description: Sequence[Sequence[Any]], rows: list[tuple[Any, ...]]) -> bytes:
        """Pickle ``(description, rows)``, keeping only each column's name and type code.

        Raises:
            pickle.PicklingError, TypeError: a value is not plain data.
        """
        desc = tuple((d[0], d[1]) for d in description)
        payload = pickle.dumps((desc, rows), protocol=pickle.HIGHEST_PROTOCOL)
        if self._key is None:
            return payload
        return hmac.new(self._key, payload, hashlib.sha256).digest() + payload

    def decode(self, value: bytes) -> Rows:
        """The ``(description, rows)`` of a payload; each description item is padded
        to the seven fields of DB-API.

        Raises:
            BadPayload: the signature or the content is wrong.
        """
        payload = value
        if self._key is not None:
            mac, payload = value[:_MAC_SIZE], value[_MAC_SIZE:]
            expected = hmac.new(self._key, payload, hashlib.sha256).digest()
            if not hmac.compare_digest(mac, expected):
                raise BadPayload("signature")
        try:
            desc, rows = _DataUnpickler(io.BytesIO(payload)).load()
            description = tuple((name, code, None, None, None, None, None) for name, code in desc)
        except Exception as exc:
            raise BadPayload("content") from exc
        if type(rows) is not list:
            raise BadPayload("content")
        return description, rows
