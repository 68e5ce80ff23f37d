"""The query-cache part of ``sqlperf demo``: a repeated read workload with and
without :class:`~sqlperf.cache.QueryCache`, then a write that invalidates."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, update
from sqlalchemy.orm import sessionmaker

from sqlperf.cache import MemoryBackend, QueryCache, RedisBackend, cached

__all__ = ["CacheDemoReport", "run_cache_demo"]


@dataclass(frozen=True, kw_only=True)
class CacheDemoReport:
    """What the cache part of the demo measured.

    Attributes:
        backend: ``"memory"`` or ``"redis"``.
        requests: reads in the repeated workload (run once without, once with the cache).
        hits / misses: the cache's answers during the cached run.
        hit_ratio: ``hits / (hits + misses)``.
        uncached_s / cached_s: wall time of each run.
        speedup: ``uncached_s / cached_s``.
        invalidated: a cached read showed a committed write at once (and the stale
            entry was not served).
    """

    backend: str
    requests: int
    hits: int
    misses: int
    hit_ratio: float
    uncached_s: float
    cached_s: float
    speedup: float
    invalidated: bool


def run_cache_demo(
    factory: sessionmaker[Any],
    *,
    revenue_by_product: Select[Any],
    order_detail: Select[Any],
    orders: Table,
    n_orders: int,
    history_end: datetime,
    redis_url: str | None,
    requests: int,
    seed: int,
    emit: Callable[[str], None],
) -> CacheDemoReport:
    """Run the cache demo on the demo's sessions; see the module docstring."""
    rng = random.Random(seed)
    weeks = [history_end - timedelta(days=7 * (k + 1)) for k in range(8)]
    hot_orders = [rng.randint(1, n_orders) for _ in range(40)]
    # A read-heavy page mix: a report over one of 8 weeks, and order pages of a hot set.
    plan: list[tuple[Select[Any], dict[str, Any]]] = [
        (revenue_by_product, {"start": w, "end": w + timedelta(days=7)})
        if rng.random() < 0.25
        else (order_detail, {"order_id": rng.choice(hot_orders)})
        for _ in range(requests)
        for w in [rng.choice(weeks)]
    ]

    def run(option: Any) -> float:
        started = time.perf_counter()
        for stmt, params in plan:
            with factory() as s:
                s.execute(stmt.options(option) if option is not None else stmt, params).all()
        return time.perf_counter() - started

    backend = RedisBackend(redis_url, namespace="sqlperf-demo") if redis_url else MemoryBackend()
    kind = "redis" if redis_url else "memory"
    emit(f"query cache ({kind}): the same {requests} reads without, then with, the cache ...")
    uncached_s = run(None)
    cache = QueryCache(backend, ttl=300).install(factory)
    try:
        backend.clear()
        cached_s = run(cached())
        stats = cache.stats()
        looked = stats.hits + stats.misses
        hit_ratio = stats.hits / looked if looked else 0.0
        speedup = uncached_s / cached_s if cached_s > 0 else 0.0
        emit(
            f"cache: {stats.hits:,} hits, {stats.misses:,} misses (hit ratio {hit_ratio:.0%}); "
            f"{uncached_s:.2f} s uncached, {cached_s:.2f} s cached: {speedup:.1f}x"
        )
        invalidated = _show_invalidation(
            factory=factory,
            cache=cache,
            order_detail=order_detail,
            orders=orders,
            order_id=hot_orders[0],
            emit=emit,
        )
    finally:
        cache.close()
        backend.close()
    return CacheDemoReport(
        backend=kind,
        requests=requests,
        hits=stats.hits,
        misses=stats.misses,
        hit_ratio=hit_ratio,
        uncached_s=uncached_s,
        cached_s=cached_s,
        speedup=speedup,
        invalidated=invalidated,
    )


def _show_invalidation(
    *,
    factory: sessionmaker[Any],
    cache: QueryCache,
    order_detail: Select[Any],
    orders: Table,
    order_id: int,
    emit: Callable[[str], None],
) -> bool:
    """Read an order (cached), change its status, read it again: the write shows."""
    stmt = order_detail.options(cached())

    def status() -> str:
        with factory() as s:
            row = s.execute(stmt, {"order_id": order_id}).first()
            return str(row.status) if row is not None else "(none)"

    before = status()
    hits = cache.stats().hits
    status()
    served_from_cache = cache.stats().hits > hits
    new = "refunded" if before != "refunded" else "delivered"
    with factory.begin() as s:
        s.execute(update(orders).where(orders.c.id == order_id).values(status=new))
    after = status()
    ok = after == new
    emit(
        f"invalidation: order {order_id} read as {before!r}"
        f"{' (from the cache)' if served_from_cache else ''}; after a committed update "
        f"the next cached read says {after!r}" + ("" if ok else "  <-- STALE")
    )
    return ok
