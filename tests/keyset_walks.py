"""Walks through every page of a keyset-paginated query, for the pagination tests."""

from __future__ import annotations

from typing import Any

from sqlperf.pagination import Page, keyset_page

MAX_PAGES = 10_000


def forward_pages(target: Any, stmt: Any, per_page: int, **kw: Any) -> list[Page[Any]]:
    """The pages from the first to the last, following ``next_cursor``."""
    pages = [keyset_page(target, stmt, per_page, **kw)]
    while pages[-1].has_next:
        assert len(pages) <= MAX_PAGES, "the forward walk does not end"
        pages.append(keyset_page(target, stmt, per_page, after=pages[-1].next_cursor, **kw))
    return pages


def backward_pages(target: Any, stmt: Any, per_page: int, **kw: Any) -> list[Page[Any]]:
    """The pages from the last to the first, following ``prev_cursor`` (items in forward order)."""
    pages = [keyset_page(target, stmt, per_page, last=True, **kw)]
    while pages[-1].has_prev:
        assert len(pages) <= MAX_PAGES, "the backward walk does not end"
        pages.append(keyset_page(target, stmt, per_page, before=pages[-1].prev_cursor, **kw))
    return pages
