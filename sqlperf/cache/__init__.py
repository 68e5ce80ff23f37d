"""Query-result cache, invalidated on commit by table.

* :class:`QueryCache`: ``attach(engine)`` to watch writes; ``execute(conn, stmt)``
  for Core reads; ``invalidate(tables)`` for writes it cannot see.
* Backends: :class:`MemoryBackend`, :class:`RedisBackend`, or anything that
  satisfies the :class:`CacheBackend` protocol.

The ORM hook (``install(sessionmaker)``, ``cached()``) is not built yet (issue 4).
"""

from sqlperf.cache.backends import CacheBackend, Lookup, MemoryBackend, RedisBackend
from sqlperf.cache.query_cache import CacheStats, QueryCache

__all__ = ["CacheBackend", "CacheStats", "Lookup", "MemoryBackend", "QueryCache", "RedisBackend"]
