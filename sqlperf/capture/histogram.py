"""Latency histogram: percentiles in bounded memory, mergeable across windows and hosts.

Durations are counted in nanosecond buckets that grow geometrically: each power
of two is split into 16 equal sub-buckets (the scheme of HdrHistogram with two
significant hex digits). A bucket's index comes from ``int.bit_length`` and a
shift, so adding a value costs a few integer operations, and a percentile read
from the bucket midpoint is within 1/32 (3.2%) of the true value. Durations from
1 ns to 2^40 ns (18 minutes) fit in at most 16 x 41 buckets, whatever the number
of values; longer ones share the last bucket.

Counts are kept sparse (``dict[int, int]``), so a fingerprint whose latency
hardly varies costs a few entries. :meth:`LatencyHistogram.to_json` and
:meth:`LatencyHistogram.from_json` carry it in a statistics row; :meth:`merge`
adds two, so percentiles over a whole log are exact to the bucket, not an
average of per-window percentiles.

The bucket scheme was chosen over a library (DDSketch, t-digest): their Python
implementations cost about 1-2 us per value, several times this one, and the
recorder adds a value for every statement the application runs.

Example::

    >>> h = LatencyHistogram()
    >>> for ms in range(1, 101):
    ...     h.add(ms * 1_000_000)
    >>> round(h.percentile(0.95) / 1e6)
    95
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["LAST_BUCKET", "MAX_BITS", "SMALL_BITS", "SUB_BITS", "LatencyHistogram", "bucket_of"]

#: 16 sub-buckets per power of two.
SUB_BITS = 4
#: Durations of at most this many bits (below 32 ns) have a bucket each.
SMALL_BITS = SUB_BITS + 1
#: 2**40 ns = 18.3 minutes; longer durations share the last bucket.
MAX_BITS = 40
_SUB = 1 << SUB_BITS
#: The index of the last bucket.
LAST_BUCKET = MAX_BITS * _SUB + _SUB - 1


def bucket_of(ns: int) -> int:
    """Return the bucket index of a duration of ``ns`` nanoseconds (``ns >= 0``)."""
    bits = ns.bit_length()
    if bits <= SMALL_BITS:
        return ns
    if bits > MAX_BITS:
        return LAST_BUCKET
    return (bits << SUB_BITS) + ((ns >> (bits - SMALL_BITS)) & (_SUB - 1))


def _bounds(index: int) -> tuple[int, int]:
    """Return the half-open range ``[low, high)`` of nanoseconds of bucket ``index``."""
    if index < 2 * _SUB:
        return index, index + 1
    bits, sub = divmod(index, _SUB)
    shift = bits - SMALL_BITS
    low = (_SUB + sub) << shift
    return low, low + (1 << shift)


class LatencyHistogram:
    """Counts of durations in geometric buckets (not thread-safe; the recorder locks).

    Attributes:
        counts: bucket index -> number of durations in it.
        total: how many durations were added.
    """

    __slots__ = ("counts", "total")

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        self.total = sum(self.counts.values())

    def add(self, ns: int) -> None:
        """Count one duration of ``ns`` nanoseconds."""
        index = bucket_of(ns)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        self.total += 1

    def merge(self, other: LatencyHistogram) -> None:
        """Add every count of ``other`` to this histogram."""
        counts = self.counts
        for index, n in other.counts.items():
            counts[index] = counts.get(index, 0) + n
        self.total += other.total

    def percentile(self, q: float) -> float:
        """Return the ``q`` quantile (``0 <= q <= 1``) in nanoseconds, 0.0 when empty.

        The value is the midpoint of the bucket holding the rank ``ceil(q * total)``
        (nearest-rank definition), so it is within 3.2% of the true quantile.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be between 0 and 1, not {q!r}")
        if not self.total:
            return 0.0
        rank = max(1, -int(-q * self.total // 1))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                low, high = _bounds(index)
                return (low + high - 1) / 2
        raise AssertionError("unreachable: rank <= total")  # pragma: no cover

    def buckets(self) -> list[tuple[int, int, int]]:
        """The non-empty buckets in order: ``(low_ns, high_ns, count)``, ``high`` exclusive."""
        return [(*_bounds(index), self.counts[index]) for index in sorted(self.counts)]

    def to_json(self) -> str:
        """The counts as compact JSON, ``{"bucket": count}``, for a statistics row."""
        return json.dumps(
            {str(k): v for k, v in sorted(self.counts.items())}, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str) -> LatencyHistogram:
        """Rebuild a histogram written by :meth:`to_json`."""
        return cls({int(k): int(v) for k, v in json.loads(text).items()})

    def __repr__(self) -> str:
        return f"LatencyHistogram(total={self.total}, buckets={len(self.counts)})"
