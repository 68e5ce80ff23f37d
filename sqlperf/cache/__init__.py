"""Query-result cache (work in progress, issue 4): backends so far.

See :mod:`sqlperf.cache.backends`.
"""

from sqlperf.cache.backends import CacheBackend, Lookup, MemoryBackend, RedisBackend

__all__ = ["CacheBackend", "Lookup", "MemoryBackend", "RedisBackend"]
