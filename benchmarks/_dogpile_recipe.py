"""The peer: SQLAlchemy's ``examples/dogpile_caching`` recipe for 2.x, reduced to its core.

A ``FromCache`` statement option; a ``do_orm_execute`` hook that keys the
statement by ``CacheKey.to_offline_string`` and asks a dogpile region
``get_or_create(key, lambda: invoke_statement().freeze())``, then returns
``merge_frozen_result(session, statement, frozen, load=False)()``. With a
Redis region the ``FrozenResult`` (ORM objects included) is pickled.
Invalidation is by key or by TTL only: it knows nothing of commits.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dogpile.cache import CacheRegion, make_region
from dogpile.cache.api import NO_VALUE
from sqlalchemy import event
from sqlalchemy.engine import Result
from sqlalchemy.orm import loading, sessionmaker
from sqlalchemy.orm.interfaces import UserDefinedOption
from sqlalchemy.orm.session import ORMExecuteState


class FromCache(UserDefinedOption):
    """Load this statement's result from the named dogpile region."""

    def __init__(self, region: str = "default") -> None:
        super().__init__(region)


class DogpileCache:
    """The recipe's ``ORMCache``: listens to ``do_orm_execute`` of one sessionmaker."""

    def __init__(self, regions: dict[str, CacheRegion]) -> None:
        self.regions = regions
        self._statement_cache: dict[Any, str] = {}

    def listen_on_session(self, factory: sessionmaker[Any]) -> None:
        """Start caching statements with ``FromCache`` in ``factory``'s sessions."""
        event.listen(factory, "do_orm_execute", self._do_orm_execute)

    def _do_orm_execute(self, state: ORMExecuteState) -> Result[Any] | None:
        for opt in state.user_defined_options:
            if isinstance(opt, FromCache):
                region = self.regions[str(opt.payload)]
                stmt: Any = state.statement
                key = stmt._generate_cache_key().to_offline_string(
                    self._statement_cache, stmt, state.parameters or {}
                )
                frozen = region.get_or_create(key, lambda: state.invoke_statement().freeze())
                if frozen is NO_VALUE:
                    raise KeyError(key)
                merge: Any = loading.merge_frozen_result  # untyped in SQLAlchemy
                merged: Result[Any] = merge(state.session, state.statement, frozen, load=False)()
                return merged
        return None


def memory_region() -> CacheRegion:
    """An in-process region (objects kept as they are, not pickled)."""
    return make_region(key_mangler=_sha1).configure("dogpile.cache.memory")


def redis_region(url: str) -> CacheRegion:
    """A Redis region: values are pickled."""
    from redis.connection import parse_url

    args: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return make_region(key_mangler=_sha1).configure(
        "dogpile.cache.redis",
        arguments={
            "host": args.get("host", "127.0.0.1"),
            "port": args.get("port", 6379),
            "db": args.get("db", 0),
            "redis_expiration_time": 300,
        },
        expiration_time=300,
    )


def _sha1(key: str) -> str:
    return "bench-dogpile:" + hashlib.sha1(key.encode()).hexdigest()
