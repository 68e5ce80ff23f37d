"""Query-result cache, invalidated on commit by table.

* :class:`QueryCache`: ``install(sessionmaker)`` for ORM sessions, ``attach(engine)``
  for Core connections; ``cached()`` / ``no_cache()`` per statement or ``cache_all``;
  ``invalidate(tables)`` for writes it cannot see.
* :class:`Admission`: per statement shape, whether the cache saves more than it costs.
* Backends: :class:`MemoryBackend`, :class:`RedisBackend`, :class:`LayeredBackend`
  (memory in front of Redis), or anything that satisfies the :class:`CacheBackend`
  protocol.
"""

from sqlperf.cache.admission import Admission
from sqlperf.cache.backends import CacheBackend, Lookup, MemoryBackend, RedisBackend
from sqlperf.cache.layered import LayeredBackend
from sqlperf.cache.options import CacheDirective, CacheOption, cached, no_cache
from sqlperf.cache.query_cache import CacheStats, QueryCache, attached_cache, cache_outcome

__all__ = [
    "Admission",
    "CacheBackend",
    "CacheDirective",
    "CacheOption",
    "CacheStats",
    "LayeredBackend",
    "Lookup",
    "MemoryBackend",
    "QueryCache",
    "RedisBackend",
    "attached_cache",
    "cache_outcome",
    "cached",
    "no_cache",
]
