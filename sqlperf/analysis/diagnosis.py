"""What to fix in a query log: N+1 loops, cache use, routing, pool waits, suggestions.

Like :mod:`sqlperf.analysis.summary`, each function takes a log and returns a
DataFrame, except :func:`suggestions`, which turns the same numbers into a short
list of concrete actions, each with the evidence that led to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from sqlperf.analysis.log import LogSource, QueryLog, load_log
from sqlperf.analysis.summary import fingerprint_table, rows_of
from sqlperf.exceptions import ConfigurationError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Suggestion",
    "cache_ratios",
    "n_plus_one_suspects",
    "pool_waits",
    "route_split",
    "suggestions",
    "tables_in_sql",
]

_NAME = r'(?:"[^"]+"|`[^`]+`|\[[^\]]+\]|[A-Za-z_][\w$]*)'
_QUALIFIED = rf"{_NAME}(?:\s*\.\s*{_NAME})?"
#: ``[AS] alias`` after a table; only taken before a comma, so ``t WHERE`` is not aliased.
_ALIAS = rf"(?:\s+(?:AS\s+)?{_NAME})?"
_FROM = re.compile(
    rf"\b(?:FROM|JOIN)\s+({_QUALIFIED}(?:{_ALIAS}\s*,\s*{_QUALIFIED})*)", re.IGNORECASE
)
#: One table of a ``FROM a [AS x], b`` list: the name, its alias skipped.
_ONE = re.compile(rf"({_QUALIFIED}){_ALIAS}", re.IGNORECASE)
_SQL_WORDS = frozenset({"select", "lateral", "unnest", "only"})

#: Plan lines that say a whole table is read (PostgreSQL, SQLite, MySQL/MariaDB). SQLite's
#: ``SCAN CONSTANT ROW`` reads no table. MySQL/MariaDB: a row of the EXPLAIN table, with or
#: without a leading ``|`` (the recorder writes none), ``type`` ALL after ``table`` (MySQL
#: has ``partitions`` between them, MariaDB not).
_FULL_SCAN = re.compile(
    r"Seq Scan on (?P<pg>\S+)"
    r"|^\s*(?:\|--|`--)?\s*SCAN (?:TABLE )?(?!CONSTANT ROW)(?P<lite>\S+)"
    r"(?![^\n]*(?:USING|INDEX))"
    r"|^\s*\|?\s*\d+\s*\|\s*\w+\s*\|\s*(?P<my>\S+)\s*\|(?:[^\n]*?\|)?\s*ALL\s*\|",
    re.MULTILINE,
)


def tables_in_sql(sql: str) -> tuple[str, ...]:
    """The tables a statement reads (after ``FROM`` and ``JOIN``), unquoted, in order.

    A text scan, not a parser: enough for the fingerprints of ORM and Core
    statements; table functions and subqueries in ``FROM`` are not tables.

    Example::

        >>> tables_in_sql('SELECT a.x FROM a AS x, "B" JOIN c ON c.id = x.id')
        ('a', 'B', 'c')
    """
    found: list[str] = []
    for match in _FROM.finditer(sql):
        for name in _ONE.findall(match.group(1)):
            parts = [p.strip().strip('"`[]') for p in name.split(".")]
            table = ".".join(parts)
            if table.lower() not in _SQL_WORDS and table not in found:
                found.append(table)
    return tuple(found)


def n_plus_one_suspects(source: LogSource | QueryLog) -> pd.DataFrame:
    """The N+1 suspects of the log: one row per fingerprint and call site.

    Returns:
        Columns ``fingerprint_id``, ``fingerprint``, ``call_site``, ``scopes`` (how
        many scopes, e.g. requests, reported it), ``executions`` (statements in
        all of them), ``max_per_scope``, ``total_ms`` and ``example_request_id``,
        by ``total_ms``, largest first.
    """
    log = load_log(source)
    import pandas as pd

    columns = [
        "fingerprint_id",
        "fingerprint",
        "call_site",
        "scopes",
        "executions",
        "max_per_scope",
        "total_ms",
        "example_request_id",
    ]
    records = log.records.loc[log.records["kind"] == "n_plus_one"]
    if records.empty:
        return cast("pd.DataFrame", pd.DataFrame({name: [] for name in columns}))
    records = records.assign(call_site=records["call_site"].fillna("(unknown)"))
    grouped = records.groupby(["fingerprint_id", "call_site"], sort=False)
    table = grouped.agg(
        fingerprint=("fingerprint", "first"),
        scopes=("count", "size"),
        executions=("count", "sum"),
        max_per_scope=("count", "max"),
        total_ms=("duration_ms", "sum"),
        example_request_id=("request_id", "first"),
    ).reset_index()
    table = table.astype({"scopes": "int64", "executions": "int64", "max_per_scope": "int64"})
    ordered = table.sort_values(["total_ms", "fingerprint_id"], ascending=[False, True])
    return cast("pd.DataFrame", ordered.loc[:, columns].reset_index(drop=True))


def cache_ratios(
    source: LogSource | QueryLog, *, by: Literal["fingerprint", "table"] = "fingerprint"
) -> pd.DataFrame:
    """How often the query-result cache answered, per fingerprint or per table.

    Only statements the cache looked up count (hits and misses at the cursor
    level, from the statistics rows); writes and bypassed statements do not.

    Args:
        source: the log.
        by: ``"fingerprint"``, or ``"table"`` (a statement reading several tables
            counts for each of them).

    Returns:
        Columns ``fingerprint_id`` and ``fingerprint`` (or ``table``), ``hits``,
        ``misses``, ``lookups`` and ``hit_ratio`` (0 to 1), by lookups, most first.

    Raises:
        ConfigurationError: an unknown ``by``.
    """
    if by not in ("fingerprint", "table"):
        raise ConfigurationError(f"by must be 'fingerprint' or 'table', not {by!r}")
    import pandas as pd

    table = fingerprint_table(source)
    looked = table.loc[(table["cache_hits"] + table["cache_misses"]) > 0]
    keys = ["fingerprint_id", "fingerprint"] if by == "fingerprint" else ["table"]
    if by == "fingerprint":
        rows = looked.loc[:, [*keys, "cache_hits", "cache_misses"]]
    else:
        exploded = [
            (name, hits, misses)
            for fingerprint, hits, misses in zip(
                looked["fingerprint"], looked["cache_hits"], looked["cache_misses"], strict=True
            )
            for name in tables_in_sql(fingerprint) or ("(no table)",)
        ]
        frame = pd.DataFrame(exploded, columns=["table", "cache_hits", "cache_misses"])
        rows = frame.groupby("table", as_index=False, sort=False).sum()
    rows = rows.rename(columns={"cache_hits": "hits", "cache_misses": "misses"})
    rows = rows.assign(lookups=rows["hits"] + rows["misses"])
    rows = rows.assign(hit_ratio=rows["hits"] / rows["lookups"].where(rows["lookups"] > 0))
    ordered = rows.sort_values(["lookups", keys[0]], ascending=[False, True])
    return cast("pd.DataFrame", ordered.reset_index(drop=True))


def route_split(source: LogSource | QueryLog) -> pd.DataFrame:
    """Statements and time per route: ``primary``, ``replica`` or ``unrouted``.

    Returns:
        Columns ``route``, ``reads`` and ``writes`` (by the statement's first word:
        ``SELECT``/``WITH`` read), ``calls``, ``total_ms``, ``share_calls`` and
        ``share_time`` (0 to 1), in that route order.
    """
    log = load_log(source)
    import pandas as pd

    stats = log.stats
    columns = ["route", "reads", "writes", "calls", "total_ms", "share_calls", "share_time"]
    if stats.empty:
        return cast("pd.DataFrame", pd.DataFrame({name: [] for name in columns}))
    route = stats["route"].fillna("unrouted").astype(str)
    reading = _reading(stats["fingerprint"])
    frame = pd.DataFrame(
        {
            "route": route,
            "reads": stats["calls"].where(reading, 0),
            "writes": stats["calls"].where(~reading, 0),
            "calls": stats["calls"],
            "total_ms": stats["total_ms"],
        }
    )
    grouped = frame.groupby("route", as_index=False, sort=False).sum()
    order = {"primary": 0, "replica": 1, "unrouted": 2}
    grouped = grouped.sort_values("route", key=lambda s: s.map(lambda r: order.get(r, 3)))
    calls, total = grouped["calls"].sum(), grouped["total_ms"].sum()
    grouped = grouped.assign(
        share_calls=grouped["calls"] / calls if calls else 0.0,
        share_time=grouped["total_ms"] / total if total else 0.0,
    )
    grouped = grouped.astype({"reads": "int64", "writes": "int64", "calls": "int64"})
    return cast("pd.DataFrame", grouped.loc[:, columns].reset_index(drop=True))


def _reading(fingerprints: pd.Series[str]) -> pd.Series[bool]:
    """Whether each statement reads, by its first word: ``SELECT``, ``WITH`` or ``SHOW``."""
    return fingerprints.str.lstrip().str.upper().str.match(r"(SELECT|WITH|SHOW)\b").fillna(False)


def pool_waits(source: LogSource | QueryLog) -> pd.DataFrame:
    """How long statements waited for a pooled connection, per engine.

    Statistics rows carry no pool figures, so this reads the records (slow,
    failed and N+1 statements) of engines made by ``create_optimized_engine``,
    whose pool measures each checkout: a sample biased towards slow requests,
    where waits matter most.

    Returns:
        Columns ``engine``, ``records`` (with a measured wait), ``waited`` (over
        1 ms), ``mean_ms``, ``p95_ms`` and ``max_ms``, by ``p95_ms``, largest first.
    """
    log = load_log(source)
    import pandas as pd

    columns = ["engine", "records", "waited", "mean_ms", "p95_ms", "max_ms"]
    measured = log.records.dropna(subset=["pool_wait_ms"])
    if measured.empty:
        return cast("pd.DataFrame", pd.DataFrame({name: [] for name in columns}))
    measured = measured.assign(engine=measured["engine"].fillna("(unknown)"))
    waits = measured.groupby("engine", sort=False)["pool_wait_ms"]
    table = pd.DataFrame(
        {
            "records": waits.size(),
            "waited": waits.apply(lambda s: int((s > 1.0).sum())),
            "mean_ms": waits.mean(),
            "p95_ms": waits.quantile(0.95),
            "max_ms": waits.max(),
        }
    ).reset_index()
    table = table.astype({"records": "int64", "waited": "int64"})
    return cast(
        "pd.DataFrame",
        table.sort_values("p95_ms", ascending=False).loc[:, columns].reset_index(drop=True),
    )


@dataclass(frozen=True)
class Suggestion:
    """One concrete thing to do, with the numbers behind it.

    Attributes:
        action: ``"batch"`` (an N+1 loop), ``"index"`` (a full scan in a plan),
            ``"cache"`` (a repeated read the cache does not answer), ``"route"``
            (reads on the primary) or ``"pool"`` (checkout waits).
        target: what to change: a call site, a table, a fingerprint or an engine.
        message: the suggestion in one sentence, with its evidence.
        fingerprint: the query shape concerned, if one.
        impact_ms: the database time concerned in the log, to rank suggestions.
    """

    action: str
    target: str
    message: str
    fingerprint: str | None
    impact_ms: float


def suggestions(
    source: LogSource | QueryLog,
    *,
    cache_min_calls: int = 50,
    cache_min_share: float = 0.02,
    pool_wait_ms: float = 5.0,
    limit: int = 10,
) -> list[Suggestion]:
    """A short list of concrete actions drawn from the log, the most time first.

    The rules:

    * **batch**: every N+1 suspect: the loop at its call site should load its rows
      in one statement (an ``IN`` list, ``selectinload``);
    * **index**: a fingerprint whose captured plan reads a whole table;
    * **cache**: a read run at least ``cache_min_calls`` times for at least
      ``cache_min_share`` of the total time, that the result cache answers less
      than half the time (or never sees);
    * **route**: reads served mostly by the primary while a replica route exists;
    * **pool**: an engine whose statements waited ``pool_wait_ms`` or more
      (95th percentile) for a connection.

    Returns:
        At most ``limit`` suggestions, by the database time they concern.

    Raises:
        ConfigurationError: ``limit`` below 1.
    """
    if limit < 1:
        raise ConfigurationError(f"limit must be at least 1, not {limit}")
    log = load_log(source)
    table = fingerprint_table(log)
    found: list[Suggestion] = []
    found += _batch(log)
    found += _index(log, table)
    found += _cache(table, cache_min_calls, cache_min_share)
    found += _route(log)
    found += _pool(log, pool_wait_ms)
    found.sort(key=lambda s: s.impact_ms, reverse=True)
    return found[:limit]


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _short(fingerprint: str, width: int = 80) -> str:
    return fingerprint if len(fingerprint) <= width else fingerprint[: width - 3] + "..."


def _batch(log: QueryLog) -> list[Suggestion]:
    suspects = n_plus_one_suspects(log)
    return [
        Suggestion(
            action="batch",
            target=row["call_site"],
            message=(
                f"Batch the loop at {row['call_site']}: it ran `{_short(row['fingerprint'])}` "
                f"up to {row['max_per_scope']} times in one scope "
                f"({row['executions']:,} statements, {row['total_ms']:,.1f} ms in "
                f"{_count(row['scopes'], 'scope')}); load the rows in one statement "
                "(an IN list, or selectinload)"
            ),
            fingerprint=row["fingerprint"],
            impact_ms=float(row["total_ms"]),
        )
        for row in rows_of(suspects)
    ]


def _index(log: QueryLog, table: pd.DataFrame) -> list[Suggestion]:
    records = log.records.dropna(subset=["explain"])
    totals = dict(zip(table["fingerprint_id"], table["total_ms"], strict=True))
    found: dict[tuple[str, str], Suggestion] = {}
    for record in rows_of(records):
        match = _FULL_SCAN.search(str(record["explain"]))
        if match is None:
            continue
        scanned = next(name for name in match.groups() if name)
        key = (str(record["fingerprint_id"]), scanned)
        if key in found:
            continue
        impact = float(totals.get(record["fingerprint_id"], record["duration_ms"]))
        found[key] = Suggestion(
            action="index",
            target=scanned,
            message=(
                f"Index {scanned} for `{_short(str(record['fingerprint']))}`: its plan reads the "
                f"whole table ({record['duration_ms']:,.1f} ms when recorded, {impact:,.1f} ms "
                "in all); index the columns of its WHERE and JOIN conditions"
            ),
            fingerprint=str(record["fingerprint"]),
            impact_ms=impact,
        )
    return list(found.values())


def _is_read(fingerprint: str) -> bool:
    return re.match(r"\s*(?:SELECT|WITH)\b", fingerprint, re.IGNORECASE) is not None


def _cache(table: pd.DataFrame, min_calls: int, min_share: float) -> list[Suggestion]:
    found = []
    for row in rows_of(table):
        lookups = row["cache_hits"] + row["cache_misses"]
        ratio = row["cache_hits"] / lookups if lookups else 0.0
        if not _is_read(row["fingerprint"]) or row["calls"] < min_calls or row["share"] < min_share:
            continue
        if ratio >= 0.5:
            continue
        seen = (
            f"the cache answered {ratio:.0%} of {lookups:,} lookups"
            if lookups
            else "the result cache never saw it"
        )
        found.append(
            Suggestion(
                action="cache",
                target=row["fingerprint_id"],
                message=(
                    f"Cache `{_short(row['fingerprint'])}`: {row['calls']:,} calls, "
                    f"{row['total_ms']:,.1f} ms ({row['share']:.0%} of all time), p95 "
                    f"{row['p95_ms']:.2f} ms; {seen}"
                ),
                fingerprint=row["fingerprint"],
                impact_ms=float(row["total_ms"]) * (1 - ratio),
            )
        )
    return found


def _route(log: QueryLog) -> list[Suggestion]:
    split = route_split(log).set_index("route")
    if "primary" not in split.index:
        return []
    primary = split.loc["primary"]
    reads_there = int(primary["reads"])
    if reads_there == 0 or "replica" not in split.index:
        return []
    replica_reads = int(split.loc["replica", "reads"])
    share = reads_there / (reads_there + replica_reads)
    if share < 0.5:
        return []
    # The time of the reads themselves, not the primary's time pro rata of its calls.
    stats = log.stats
    on_primary = (stats["route"] == "primary").fillna(False) & _reading(stats["fingerprint"])
    time_there = float(stats.loc[on_primary, "total_ms"].sum())
    return [
        Suggestion(
            action="route",
            target="primary",
            message=(
                f"Move reads to the replica: the primary served {reads_there:,} reads "
                f"({share:.0%} of all reads) against {replica_reads:,} on the replica; "
                "read in RoutingSession without a pending write, or mark the session read-only"
            ),
            fingerprint=None,
            impact_ms=time_there,
        )
    ]


def _pool(log: QueryLog, threshold_ms: float) -> list[Suggestion]:
    waits = pool_waits(log)
    return [
        Suggestion(
            action="pool",
            target=str(row["engine"]),
            message=(
                f"Give engine {row['engine']} more connections or fewer threads: statements "
                f"waited p95 {row['p95_ms']:.1f} ms (max {row['max_ms']:.1f} ms) for a pooled "
                f"connection in {row['waited']:,} of {row['records']:,} records"
            ),
            fingerprint=None,
            impact_ms=float(row["mean_ms"]) * int(row["records"]),
        )
        for row in rows_of(waits)
        if row["p95_ms"] >= threshold_ms
    ]
