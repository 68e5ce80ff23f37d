"""sqlperf: make SQLAlchemy 2.x applications faster and observable.

Example::

    from sqlperf import create_optimized_engine, pool_status

    engine = create_optimized_engine("postgresql+psycopg2://app@db/app", workload="web")
    print(pool_status(engine))
"""

from sqlperf.budget import PoolBudget, check_pool_budget
from sqlperf.engine import PoolPlan, Workload, create_optimized_engine, plan_pool, safe_url
from sqlperf.exceptions import (
    ConfigurationError,
    MissingDependency,
    PoolTimeout,
    SqlperfError,
    UnsupportedDatabase,
)
from sqlperf.pool import PoolStatus, WaitStats, pool_status

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "MissingDependency",
    "PoolBudget",
    "PoolPlan",
    "PoolStatus",
    "PoolTimeout",
    "SqlperfError",
    "UnsupportedDatabase",
    "WaitStats",
    "Workload",
    "__version__",
    "check_pool_budget",
    "create_optimized_engine",
    "plan_pool",
    "pool_status",
    "safe_url",
]
