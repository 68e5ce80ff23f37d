"""sqlperf: make SQLAlchemy 2.x applications faster and observable.

Example::

    from sqlperf import create_optimized_engine, pool_status

    engine = create_optimized_engine("postgresql+psycopg2://app@db/app", workload="web")
    print(pool_status(engine))
"""

from sqlperf.analysis import build_report, diff_logs, load_log, suggestions, top_fingerprints
from sqlperf.budget import PoolBudget, check_pool_budget
from sqlperf.bulk import BulkResult, bulk_delete, bulk_insert, bulk_update, bulk_upsert
from sqlperf.cache import LayeredBackend, MemoryBackend, QueryCache, RedisBackend, cached, no_cache
from sqlperf.capture import QueryRecorder, read_query_log, read_query_stats
from sqlperf.engine import PoolPlan, Workload, create_optimized_engine, plan_pool, safe_url
from sqlperf.exceptions import (
    ConfigurationError,
    InvalidCursor,
    MissingDependency,
    PaginationError,
    PoolTimeout,
    SqlperfError,
    UnsupportedDatabase,
)
from sqlperf.pagination import Page, iter_keyset, keyset_page
from sqlperf.pool import PoolStatus, WaitStats, pool_status
from sqlperf.routing import (
    ConsistencyToken,
    ReplicaHealth,
    RouteStats,
    RoutingSession,
    engine_role,
    replica_health,
    routing_stats,
)

__version__ = "0.1.0"

__all__ = [
    "BulkResult",
    "ConfigurationError",
    "ConsistencyToken",
    "InvalidCursor",
    "LayeredBackend",
    "MemoryBackend",
    "MissingDependency",
    "Page",
    "PaginationError",
    "PoolBudget",
    "PoolPlan",
    "PoolStatus",
    "PoolTimeout",
    "QueryCache",
    "QueryRecorder",
    "RedisBackend",
    "ReplicaHealth",
    "RouteStats",
    "RoutingSession",
    "SqlperfError",
    "UnsupportedDatabase",
    "WaitStats",
    "Workload",
    "__version__",
    "build_report",
    "bulk_delete",
    "bulk_insert",
    "bulk_update",
    "bulk_upsert",
    "cached",
    "check_pool_budget",
    "create_optimized_engine",
    "diff_logs",
    "engine_role",
    "iter_keyset",
    "keyset_page",
    "load_log",
    "no_cache",
    "plan_pool",
    "pool_status",
    "read_query_log",
    "read_query_stats",
    "replica_health",
    "routing_stats",
    "safe_url",
    "suggestions",
    "top_fingerprints",
]
