"""The pagination part of ``sqlperf demo``: orders by ``(created_at DESC, id DESC)``
paged forward and back with cursors, then one deep page by OFFSET and by keyset."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import sessionmaker

from sqlperf.pagination import keyset_page

__all__ = ["PagesDemoReport", "run_pages_demo"]


@dataclass(frozen=True, kw_only=True)
class PagesDemoReport:
    """What the pagination part of the demo did and measured.

    Attributes:
        per_page: rows per page.
        pages_walked: pages fetched forward, then as many back.
        round_trip_ok: walking back with ``prev_cursor`` gave the same pages.
        cursor_chars: the length of a next-page cursor.
        depth: the page number timed (the deepest full page, at most 2,000).
        offset_ms / keyset_ms: that page by ``LIMIT/OFFSET`` and by ``keyset_page``
            (medians of 5).
        same_rows: both returned the same rows.
    """

    per_page: int
    pages_walked: int
    round_trip_ok: bool
    cursor_chars: int
    depth: int
    offset_ms: float
    keyset_ms: float
    same_rows: bool


def run_pages_demo(
    factory: sessionmaker[Any],
    *,
    orders: Table,
    n_orders: int,
    emit: Callable[[str], None],
    per_page: int = 50,
) -> PagesDemoReport:
    """Run the pagination demo on the demo's sessions; see the module docstring."""
    stmt = select(orders.c.id, orders.c.created_at, orders.c.status).order_by(
        orders.c.created_at.desc(), orders.c.id.desc()
    )
    walked = min(3, max(1, n_orders // per_page))
    with factory() as s:
        forward = [keyset_page(s, stmt, per_page)]
        while len(forward) < walked and forward[-1].has_next:
            forward.append(keyset_page(s, stmt, per_page, after=forward[-1].next_cursor))
        backward = [forward[-1]]
        while len(backward) < len(forward) and backward[0].has_prev:
            backward.insert(0, keyset_page(s, stmt, per_page, before=backward[0].prev_cursor))
        ids = [[r.id for r in p.items] for p in forward]
        round_trip = ids == [[r.id for r in p.items] for p in backward]
        cursor = forward[0].next_cursor or ""
        emit(
            f"pages: orders by created_at DESC, id DESC, {per_page} a page; "
            f"{len(forward)} page(s) forward, then back with prev_cursor: "
            f"{'the same rows' if round_trip else 'DIFFERENT rows'}; "
            f"a cursor is {len(cursor)} characters ({cursor[:24]}...)"
        )
        for number, page in enumerate(forward, 1):
            first, last = page.items[0], page.items[-1]
            emit(
                f"  page {number}: ids {first.id}..{last.id}, "
                f"{first.created_at:%Y-%m-%d %H:%M} .. {last.created_at:%Y-%m-%d %H:%M}"
            )
        depth = max(1, min(2000, n_orders // per_page))
        offset = (depth - 1) * per_page
        # The cursor a client holds after reading pages 1 .. depth - 1, one by one.
        walk_started = time.perf_counter()
        page, boundary = forward[0], None
        for _ in range(depth - 1):
            boundary = page.next_cursor
            page = keyset_page(s, stmt, per_page, after=boundary)
        walk_s = time.perf_counter() - walk_started
        by_offset: list[float] = []
        by_keyset: list[float] = []
        for _ in range(5):
            t0 = time.perf_counter()
            offset_rows = s.execute(stmt.limit(per_page).offset(offset)).all()
            t1 = time.perf_counter()
            keyset_rows = keyset_page(s, stmt, per_page, after=boundary).items
            t2 = time.perf_counter()
            by_offset.append((t1 - t0) * 1e3)
            by_keyset.append((t2 - t1) * 1e3)
        same = [r.id for r in offset_rows] == [r.id for r in keyset_rows]
    offset_ms, keyset_ms = statistics.median(by_offset), statistics.median(by_keyset)
    emit(
        f"page {depth:,} ({offset:,} rows in, reached by {depth - 1:,} cursor pages in "
        f"{walk_s:.2f} s): OFFSET {offset_ms:.2f} ms, keyset {keyset_ms:.2f} ms "
        f"({offset_ms / keyset_ms:.1f}x); {'the same rows' if same else 'DIFFERENT rows'}"
    )
    return PagesDemoReport(
        per_page=per_page,
        pages_walked=len(forward),
        round_trip_ok=round_trip,
        cursor_chars=len(cursor),
        depth=depth,
        offset_ms=offset_ms,
        keyset_ms=keyset_ms,
        same_rows=same,
    )
