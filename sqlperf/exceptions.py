"""Errors raised by sqlperf.

Every error sqlperf raises derives from :class:`SqlperfError`. Where a caller would
reasonably catch a builtin or SQLAlchemy exception, the sqlperf error inherits from
that too, so existing ``except`` clauses keep working::

    SqlperfError
    ├── ConfigurationError (ValueError)        bad argument, URL or workload
    │   ├── MissingDependency (ImportError)    an optional extra is not installed
    │   └── UnsupportedDatabase                a URL sqlperf cannot tune
    ├── PaginationError                        a statement keyset paging cannot handle
    │   └── InvalidCursor (ValueError)         a malformed, tampered or foreign cursor
    └── PoolTimeout (sqlalchemy.exc.TimeoutError)
                                               no pooled connection within pool_timeout

Errors from the database driver (``sqlalchemy.exc.DBAPIError`` and its children)
are never wrapped: they propagate exactly as SQLAlchemy raises them.
"""

from __future__ import annotations

import sqlalchemy.exc

__all__ = [
    "ConfigurationError",
    "InvalidCursor",
    "MissingDependency",
    "PaginationError",
    "PoolTimeout",
    "SqlperfError",
    "UnsupportedDatabase",
]


class SqlperfError(Exception):
    """Root of every error raised by sqlperf itself."""


class ConfigurationError(SqlperfError, ValueError):
    """An argument, URL or option is not valid; the message says how to fix it."""


class MissingDependency(ConfigurationError, ImportError):
    """An optional dependency is missing; the message names the extra to install.

    Example::

        MissingDependency("psycopg2", extra="postgres")
        # -> "psycopg2 is not installed: pip install 'sqlperf[postgres]'"
    """

    def __init__(self, module: str, *, extra: str | None, purpose: str = "") -> None:
        self.module = module
        self.extra = extra
        why = f" (needed for {purpose})" if purpose else ""
        fix = f"pip install 'sqlperf[{extra}]'" if extra else f"pip install {module}"
        super().__init__(f"{module} is not installed{why}: {fix}")


class UnsupportedDatabase(ConfigurationError):
    """The URL names a database or driver that sqlperf cannot tune."""


class PaginationError(SqlperfError):
    """A statement or argument keyset pagination cannot work with; the message says why."""


class InvalidCursor(PaginationError, ValueError):
    """A pagination cursor that is malformed, was tampered with, or was made for another ordering.

    Its message is safe to show to an API client (a 400 response): it names what is
    wrong with the cursor, never a value from it or the signing key.
    """


class PoolTimeout(SqlperfError, sqlalchemy.exc.TimeoutError):
    """No connection could be checked out of the pool within ``pool_timeout``.

    It is also a ``sqlalchemy.exc.TimeoutError``, so handlers written for plain
    SQLAlchemy still catch it. The message reports the pool's state and, when
    leak detection is on, who holds the oldest connections.
    """
