"""Keyset pagination: :func:`keyset_page`, :func:`iter_keyset`, :class:`Page`, and the cursors.

See ``keyset.py`` for how the ordering and the boundary condition are built and
``cursor.py`` for the cursor format.
"""

from sqlperf.exceptions import InvalidCursor, PaginationError
from sqlperf.pagination.cursor import decode_cursor, encode_cursor
from sqlperf.pagination.keyset import Page, Totals, iter_keyset, keyset_page

__all__ = [
    "InvalidCursor",
    "Page",
    "PaginationError",
    "Totals",
    "decode_cursor",
    "encode_cursor",
    "iter_keyset",
    "keyset_page",
]
