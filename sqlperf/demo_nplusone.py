"""The N+1 part of ``sqlperf demo``: a customer page written the slow way, then batched.

Each request lists a customer's recent orders, then loads the lines of each
order with its own query: one statement per order, the N+1 pattern an ORM
lazy load produces. The recorder's scope sees one fingerprint repeated from one
call site and reports it; the same page with one ``IN`` query follows, so the
log holds the problem and its fix side by side for the report and the notebooks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import sessionmaker

from sqlperf.capture import QueryRecorder

__all__ = ["NPlusOneDemoReport", "run_n_plus_one_demo"]


@dataclass(frozen=True, kw_only=True)
class NPlusOneDemoReport:
    """What the N+1 part of the demo measured.

    Attributes:
        requests: customer pages loaded each way.
        loop_queries / batched_queries: statements per page, on average.
        loop_ms / batched_ms: the median page time each way.
        suspects: N+1 records the recorder reported for the loop (one per request).
    """

    requests: int
    loop_queries: float
    batched_queries: float
    loop_ms: float
    batched_ms: float
    suspects: int


def _lines_of_order(session: Any, order_items: Table, order_id: int) -> list[Any]:
    """One order's lines: the query the loop repeats (its call site in the report)."""
    stmt = select(order_items).where(order_items.c.order_id == order_id)
    return list(session.execute(stmt).all())


def run_n_plus_one_demo(
    factory: sessionmaker[Any],
    recorder: QueryRecorder,
    *,
    orders: Table,
    order_items: Table,
    n_customers: int,
    emit: Callable[[str], None],
    requests: int = 20,
    seed: int = 42,
) -> NPlusOneDemoReport:
    """Load ``requests`` customer pages with a loop of queries, then with one ``IN`` query."""
    rng = random.Random(seed)
    customers = [rng.randint(1, n_customers) for _ in range(requests)]
    loop_ms: list[float] = []
    batched_ms: list[float] = []
    loop_queries = batched_queries = suspects = 0
    for i, customer in enumerate(customers):
        page = (
            select(orders.c.id)
            .where(orders.c.customer_id == customer)
            .order_by(orders.c.id.desc())
            .limit(10)
        )
        began = time.perf_counter()
        with (
            recorder.scope(request_id=f"n+1-loop-{i}", page="customer") as scope,
            factory() as session,
        ):
            for order_id in list(session.scalars(page)):
                _lines_of_order(session, order_items, order_id)
        loop_ms.append((time.perf_counter() - began) * 1000)
        loop_queries += scope.queries
        suspects += len(scope.suspects)

        began = time.perf_counter()
        with (
            recorder.scope(request_id=f"n+1-batched-{i}", page="customer") as scope,
            factory() as session,
        ):
            ids = list(session.scalars(page))
            if ids:
                session.execute(select(order_items).where(order_items.c.order_id.in_(ids))).all()
        batched_ms.append((time.perf_counter() - began) * 1000)
        batched_queries += scope.queries
    report = NPlusOneDemoReport(
        requests=requests,
        loop_queries=loop_queries / requests,
        batched_queries=batched_queries / requests,
        loop_ms=sorted(loop_ms)[requests // 2],
        batched_ms=sorted(batched_ms)[requests // 2],
        suspects=suspects,
    )
    emit(
        f"n+1: {requests} customer pages loading each order's lines in a loop: "
        f"{report.loop_queries:.1f} queries and {report.loop_ms:.2f} ms a page (median), "
        f"{report.suspects} N+1 suspects reported; batched with one IN query: "
        f"{report.batched_queries:.1f} queries and {report.batched_ms:.2f} ms"
    )
    return report
