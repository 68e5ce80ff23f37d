"""Which statements are cached: the ``cached()`` and ``no_cache()`` options.

A statement asks for the cache with ``.options(cached(ttl=60))`` (ORM or Core
``select()``) or with the execution option ``sqlperf_cache=cached(...)``; a
:class:`~sqlperf.cache.QueryCache` made with ``cache_all=True`` caches every
``SELECT`` that does not say ``no_cache()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm.interfaces import UserDefinedOption

from sqlperf.exceptions import ConfigurationError

__all__ = ["CACHE_OPTION", "CacheDirective", "CacheOption", "cached", "no_cache"]

#: The execution option that carries a :class:`CacheDirective` down to the cursor.
CACHE_OPTION = "sqlperf_cache"


@dataclass(frozen=True)
class CacheDirective:
    """What a statement asked of the cache.

    Attributes:
        enabled: ``False`` for ``no_cache()``.
        ttl: seconds the entry lives; ``None`` for the cache's default.
        tables: the tables a ``text()`` statement reads (required to cache it,
            since its SQL is not analysed); ``None`` for analysed statements.
    """

    enabled: bool = True
    ttl: float | None = None
    tables: tuple[str, ...] | None = None


class CacheOption(UserDefinedOption):
    """A statement option carrying a :class:`CacheDirective`; made by :func:`cached`
    and :func:`no_cache`.

    It propagates to the relationship loads (lazy, ``selectinload``) of the objects
    the statement loads, so they are cached alike.
    """

    propagate_to_loaders = True
    payload: CacheDirective

    def __init__(self, directive: CacheDirective) -> None:
        super().__init__(directive)


def cached(ttl: float | None = None, *, tables: Iterable[str] | None = None) -> CacheOption:
    """Cache this statement's result.

    Args:
        ttl: seconds the entry lives (default: the cache's ``ttl``).
        tables: for a ``text()`` statement, the tables it reads; analysed
            statements (``select()``) find their tables themselves.

    Example::

        >>> from sqlalchemy import column, select, table
        >>> stmt = select(table("users", column("id"))).options(cached(ttl=60))
    """
    if ttl is not None and ttl <= 0:
        raise ConfigurationError(f"cached(ttl={ttl!r}): ttl must be a positive number of seconds")
    names = tuple(sorted(set(tables))) if tables is not None else None
    if names is not None and not names:
        raise ConfigurationError("cached(tables=[]): name at least one table the statement reads")
    return CacheOption(CacheDirective(True, ttl, names))


def no_cache() -> CacheOption:
    """Never serve or store this statement from the cache (with ``cache_all=True``)."""
    return CacheOption(CacheDirective(enabled=False))


def directive_of(options: Iterable[Any]) -> CacheDirective | None:
    """The last :class:`CacheDirective` among a statement's options, if any."""
    found = None
    for opt in options:
        if type(opt) is CacheOption:
            found = opt.payload
    return found
