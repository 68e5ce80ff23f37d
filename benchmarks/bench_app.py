"""App benchmark: the shop API of ``examples/fastapi_app.py`` as plain SQLAlchemy and with sqlperf.

Each configuration is the same app, served by uvicorn in a subprocess of its own
on a free loopback port (one worker; FastAPI runs the endpoints in its thread
pool), chosen by the environment of ``examples/shop.py``:

* **plain**: ``SQLPERF_APP_MODE=plain``: ``create_engine``, a plain ``Session``,
  no cache, no recorder, no middleware;
* **sqlperf**: the optimized engine, ``RoutingSession`` (with a replica when
  ``--replica-url`` is given) through ``SqlperfMiddleware``, and the query cache
  (memory, or Redis with ``--redis-url``); the recorder off;
* **sqlperf+capture**: the same with the ``QueryRecorder`` on (aggregates, N+1
  scopes, ``Server-Timing``).

All three servers start first, each answers ``/health`` and is warmed up; then
a bounded load generator sends a fixed number of requests from ``--clients``
concurrent connections, for two workloads:

* **read-heavy**: ``GET /orders/{id}`` (the cached order detail) over a skewed
  set of ids: 90% of the requests go to 100 hot orders, the rest anywhere;
* **read-hot**: the same endpoint on the 100 hot orders only, so that with the
  cache every request after the warm-up is a hit: the most the cache can give on
  this endpoint, on this machine (the request's cost outside the database, the
  same in both apps, bounds it);
* **mixed**: 60% order details (the same skew), 30% first pages of a customer's
  orders (``GET /customers/{id}/orders``, skewed customers), 10% ``POST /orders``.

Rounds are interleaved (every configuration and workload once per round, the
order rotating), because the server and the load generator share the machine's
CPUs and the machine drifts. Requests per second and latency percentiles are
client-side. Ratios are medians of the per-round ratios between configurations
of the same round (rps and p99); p50/p99 in the table are over all rounds' requests.

The load generator is an asyncio HTTP/1.1 client with one keep-alive connection
per client, a few lines over ``asyncio`` streams: on this 2-core machine the
client's CPU time is taken from the server, and a general client (``httpx``)
spends several times as much per request.

On SQLite (the default) the template database is seeded once with plain
SQLAlchemy and each configuration gets its own copy, so none inherits another's
journal mode or orders. On a server every configuration uses the same database
(``--db-url``; use a scratch one: the mixed workload places orders); tables the
benchmark had to create and seed are dropped at the end. Each configuration has
a cache of its own (in its process, or its own namespace in ``--redis-url``,
cleared before and after), so none is warmed by another.

Run: ``python -m benchmarks.bench_app`` (``--db-url``, ``--replica-url``,
``--redis-url`` for PostgreSQL + replica + Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select

from benchmarks._common import report_targets
from examples.shop import prepare_database
from sqlperf import safe_url
from sqlperf.demo import customers, metadata, orders, products

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

#: Configuration name -> the app's environment (besides the database URLs).
CONFIGS: dict[str, dict[str, str]] = {
    "plain": {"SQLPERF_APP_MODE": "plain"},
    "sqlperf": {"SQLPERF_APP_MODE": "sqlperf", "SQLPERF_CACHE": "1", "SQLPERF_CAPTURE": "0"},
    "sqlperf+capture": {
        "SQLPERF_APP_MODE": "sqlperf",
        "SQLPERF_CACHE": "1",
        "SQLPERF_CAPTURE": "1",
    },
}
WORKLOADS = ("read-heavy", "read-hot", "mixed")
HOT_ORDERS = 100
#: Targets: sqlperf serves the read-heavy load at least 3x as fast as plain
#: SQLAlchemy; the recorder makes p99 no worse, within a tolerance for noise.
RPS_TARGET = 3.0
P99_TOLERANCE = 1.05


# -- the load generator ------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request, already encoded."""

    kind: str  # "detail", "page", "create"
    raw: bytes


def _encode(method: str, path: str, body: Any = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    payload = json.dumps(body).encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


@dataclass
class Sample:
    """What one run of the load generator measured."""

    seconds: float
    latencies_ms: list[float]
    errors: int
    first_error: str | None = None
    db_ms: list[float] = field(default_factory=list)  # from Server-Timing, where sent

    @property
    def rps(self) -> float:
        """Requests answered per second."""
        return len(self.latencies_ms) / self.seconds


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, float | None]:
    """Status, body, and the ``db;dur=`` of ``Server-Timing`` (``None`` without one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise RuntimeError(f"a response without Content-Length: {head[:200]!r}")
    length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
    db_ms = None
    at = lower.find(b"db;dur=")
    if at >= 0:
        db_ms = float(lower[at + 7 : lower.index(b";", at + 7)])
    return status, await reader.readexactly(length), db_ms


async def _drive(port: int, requests: list[Request], clients: int) -> Sample:
    """Send ``requests`` over ``clients`` keep-alive connections, each waiting for its answer."""
    pending = iter(requests)
    latencies: list[float] = []
    db_ms: list[float] = []
    errors: list[str] = []
    perf = time.perf_counter

    async def client() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for request in pending:
                began = perf()
                writer.write(request.raw)
                status, body, db = await _read_response(reader)
                latencies.append((perf() - began) * 1000)
                if db is not None:
                    db_ms.append(db)
                if status >= 400:
                    errors.append(f"{request.kind}: HTTP {status} {body[:200]!r}")
        finally:
            writer.close()

    began = perf()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = perf() - began
    return Sample(seconds, latencies, len(errors), errors[0] if errors else None, db_ms)


def run_load(port: int, requests: list[Request], clients: int) -> Sample:
    """Run :func:`_drive` on a fresh event loop."""
    return asyncio.run(_drive(port, requests, clients))


@dataclass(frozen=True)
class Plan:
    """The ids the workloads pick from."""

    orders: int
    customers: int
    products: int


def _skewed(rng: random.Random, n: int, hot: float = 0.9) -> int:
    """A share ``hot`` of the picks among ``HOT_ORDERS`` ids spread over 1..n, the rest anywhere."""
    if rng.random() < hot:
        return 1 + (rng.randrange(min(HOT_ORDERS, n)) * 7919) % n
    return rng.randint(1, n)


def make_requests(workload: str, plan: Plan, n: int, seed: int) -> list[Request]:
    """``n`` requests of ``workload`` (see the module), the same for every configuration."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        roll = rng.random() if workload == "mixed" else 0.0
        if roll < 0.6:
            hot = 1.0 if workload == "read-hot" else 0.9
            order = _skewed(rng, plan.orders, hot)
            out.append(Request("detail", _encode("GET", f"/orders/{order}")))
        elif roll < 0.9:
            customer = min(plan.customers, int(plan.customers * rng.random() ** 2) + 1)
            out.append(Request("page", _encode("GET", f"/customers/{customer}/orders")))
        else:
            lines = [
                {"product_id": rng.randint(1, plan.products), "quantity": rng.randint(1, 3)}
                for _ in range(rng.randint(1, 3))
            ]
            body = {"customer_id": rng.randint(1, plan.customers), "lines": lines}
            out.append(Request("create", _encode("POST", "/orders", body)))
    return out


# -- the servers -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


@dataclass
class Server:
    """One configuration's uvicorn process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def health(self) -> dict[str, Any]:
        """The app's ``/health`` answer."""
        result: dict[str, Any] = _get_json(self.port, "/health")
        return result

    def log_tail(self) -> str:
        """The end of the server's output, for error messages."""
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def serve(name: str, env: dict[str, str], logs: Path, timeout_s: float = 60.0) -> Iterator[Server]:
    """Run ``examples.fastapi_app`` under uvicorn with ``env``; yield once ``/health`` answers."""
    port = _free_port()
    log = logs / f"{name}.log"
    command = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:create_app", "--factory"]
    command += ["--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "warning"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    server = Server(name, port, process, log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the {name} server exited:\n{server.log_tail()}")
            try:
                server.health()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the {name} server never answered:\n{server.log_tail()}"
                    ) from None
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _app_env(db_url: str, replica_url: str | None, redis_url: str | None) -> dict[str, str]:
    """This process's environment without any ``SQLPERF_*`` setting, plus the URLs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLPERF_")}
    env["SQLPERF_DATABASE_URL"] = db_url
    if replica_url:
        env["SQLPERF_REPLICA_URL"] = replica_url
    if redis_url:
        env["SQLPERF_REDIS_URL"] = redis_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _prepare(url: str, seed_orders: int) -> tuple[Plan, bool]:
    """Create and seed the shop on ``url`` if needed (plain SQLAlchemy); the ids to pick from.

    Returns the plan and whether the tables were seeded now.
    """
    engine = create_engine(url)
    try:
        seeded = prepare_database(engine, seed_orders)
        with engine.connect() as conn:
            plan = Plan(
                *(
                    conn.execute(select(func.max(t.c.id))).scalar_one()
                    for t in (orders, customers, products)
                )
            )
    finally:
        engine.dispose()
    return plan, seeded


def _drop_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        metadata.drop_all(engine)
    finally:
        engine.dispose()


def _namespace(config: str) -> str:
    """Each configuration's own cache keys in a shared Redis: none warms another's cache."""
    return f"sqlperf-shop-bench-{config}"


def _clear_redis(redis_url: str) -> None:
    from sqlperf.cache import RedisBackend

    for config in CONFIGS:
        backend = RedisBackend(redis_url, namespace=_namespace(config))
        try:
            backend.clear()
        finally:
            backend.close()


# -- measuring ---------------------------------------------------------------------


@dataclass
class Series:
    """One configuration and workload over the rounds."""

    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    db_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    cache_hits: int = 0
    cache_misses: int = 0

    def add(self, sample: Sample, hits: int, misses: int) -> None:
        """Fold in one round's sample and the cache counters it moved."""
        self.rps.append(sample.rps)
        self.p50_ms.append(_percentile(sample.latencies_ms, 50))
        self.p99_ms.append(_percentile(sample.latencies_ms, 99))
        self.latencies_ms.extend(sample.latencies_ms)
        self.db_ms.extend(sample.db_ms)
        self.errors += sample.errors
        self.first_error = self.first_error or sample.first_error
        self.cache_hits += hits
        self.cache_misses += misses

    def summary(self) -> dict[str, Any]:
        """Medians and pooled percentiles, for the JSON."""
        looked = self.cache_hits + self.cache_misses
        return {
            "rps": statistics.median(self.rps),
            "rps_rounds": [round(v, 1) for v in self.rps],
            "p50_ms": _percentile(self.latencies_ms, 50),
            "p99_ms": _percentile(self.latencies_ms, 99),
            "p99_ms_rounds": [round(v, 3) for v in self.p99_ms],
            "requests": len(self.latencies_ms),
            "errors": self.errors,
            "first_error": self.first_error,
            "cache_hit_ratio": self.cache_hits / looked if looked else None,
            # The server's own database time per request (Server-Timing: capture on only).
            "db_ms_mean": statistics.fmean(self.db_ms) if self.db_ms else None,
        }


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def _cache_counts(server: Server) -> tuple[int, int]:
    health = server.health()
    return health["cache_hits"] or 0, health["cache_misses"] or 0


def _paired(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios ``a / b``."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def measure(
    servers: list[Server], plan: Plan, *, requests: int, clients: int, rounds: int, warmup: int
) -> dict[str, dict[str, Series]]:
    """Warm every server up, then run the interleaved rounds."""
    for server in servers:
        for k, workload in enumerate(WORKLOADS):
            run_load(server.port, make_requests(workload, plan, warmup, seed=-1 - k), clients)
    series = {s.name: {w: Series() for w in WORKLOADS} for s in servers}
    for r in range(rounds):
        order = servers[r % len(servers) :] + servers[: r % len(servers)]
        workloads = WORKLOADS if r % 2 == 0 else WORKLOADS[::-1]
        for k, workload in enumerate(workloads):
            batch = make_requests(workload, plan, requests, seed=1000 * r + k)
            for server in order:
                hits, misses = _cache_counts(server)
                sample = run_load(server.port, batch, clients)
                hits2, misses2 = _cache_counts(server)
                series[server.name][workload].add(sample, hits2 - hits, misses2 - misses)
                print(
                    f"  round {r + 1}/{rounds} {workload:<10} {server.name:<16}"
                    f"{sample.rps:8.0f} req/s  p99 {_percentile(sample.latencies_ms, 99):6.2f} ms"
                    + (f"  {sample.errors} errors" if sample.errors else ""),
                    flush=True,
                )
    return series


def run(
    *,
    db_url: str | None,
    replica_url: str | None,
    redis_url: str | None,
    requests: int,
    clients: int,
    rounds: int,
    warmup: int,
    seed_orders: int,
) -> dict[str, Any]:
    """Prepare the database(s), start the three servers, measure; the results as a dict."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_app-")))
        urls: dict[str, str] = {}
        if db_url is None:  # one seeded SQLite template, one copy per configuration
            plan, _ = _prepare(f"sqlite:///{tmp / 'template.db'}", seed_orders)
            for name in CONFIGS:
                shutil.copyfile(tmp / "template.db", tmp / f"{name}.db")
                urls[name] = f"sqlite:///{tmp / name}.db"
        else:
            plan, created = _prepare(db_url, seed_orders)
            if created and not db_url.startswith("sqlite"):
                stack.callback(_drop_tables, db_url)
            urls = dict.fromkeys(CONFIGS, db_url)
        if redis_url:
            _clear_redis(redis_url)
            stack.callback(_clear_redis, redis_url)
        servers = [
            stack.enter_context(
                serve(
                    name,
                    {
                        **_app_env(urls[name], replica_url, redis_url),
                        "SQLPERF_CACHE_NAMESPACE": _namespace(name),
                        **env,
                    },
                    tmp,
                )
            )
            for name, env in CONFIGS.items()
        ]
        health = {s.name: s.health() for s in servers}
        print(
            f"servers up: {', '.join(f'{s.name} :{s.port}' for s in servers)}; "
            f"{plan.orders:,} orders to read; {requests} requests per sample, "
            f"{clients} clients, {rounds} rounds",
            flush=True,
        )
        series = measure(
            servers, plan, requests=requests, clients=clients, rounds=rounds, warmup=warmup
        )
    ratios: dict[str, float] = {}
    for workload in WORKLOADS:
        plain, fast, captured = (series[c][workload] for c in CONFIGS)
        ratios[f"{workload} rps sqlperf / plain"] = _paired(fast.rps, plain.rps)
        ratios[f"{workload} rps sqlperf+capture / plain"] = _paired(captured.rps, plain.rps)
        ratios[f"{workload} p99 capture on / off"] = _paired(captured.p99_ms, fast.p99_ms)
        ratios[f"{workload} p50 capture on / off"] = _paired(captured.p50_ms, fast.p50_ms)
    return {
        "database": safe_url(db_url) if db_url else "sqlite file per configuration",
        "replica": safe_url(replica_url) if replica_url else None,
        "cache_backend": "redis" if redis_url else "memory",
        "requests_per_sample": requests,
        "clients": clients,
        "rounds": rounds,
        "warmup_requests": warmup,
        "orders_read": plan.orders,
        "health": health,
        "configs": {
            name: {"env": CONFIGS[name], **{w: s.summary() for w, s in by_workload.items()}}
            for name, by_workload in series.items()
        },
        "ratios": ratios,
    }


def _print_table(results: dict[str, Any]) -> None:
    print(
        f"\n{results['database']}, replica {results['replica'] or 'none'}, "
        f"{results['cache_backend']} cache; {results['clients']} clients, "
        f"{results['rounds']} rounds of {results['requests_per_sample']} requests"
    )
    print(
        f"  {'workload':<11}{'configuration':<17}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'cache hits':>12}{'db ms/req':>11}"
    )
    for workload in WORKLOADS:
        for name, config in results["configs"].items():
            r = config[workload]
            hit = "-" if r["cache_hit_ratio"] is None else f"{r['cache_hit_ratio']:.0%}"
            db = "-" if r["db_ms_mean"] is None else f"{r['db_ms_mean']:.3f}"
            print(
                f"  {workload:<11}{name:<17}{r['rps']:8.0f}{r['p50_ms']:9.2f}{r['p99_ms']:9.2f}"
                f"{hit:>12}{db:>11}"
                + (f"  {r['errors']} errors, first: {r['first_error']}" if r["errors"] else "")
            )
    print("\n  ratios (medians of per-round ratios)")
    for label, value in results["ratios"].items():
        print(f"  {label:<40}{value:7.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table and write the results as JSON.

    Returns 0: a missed target is reported (``MISS`` and ``"met": false``), not an
    error; 1 if any request failed.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per sample")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=300, help="requests per workload, first")
    parser.add_argument("--orders", type=int, default=3000, help="orders seeded into an empty db")
    parser.add_argument("--db-url", help="the primary (default: SQLite files in a temp folder)")
    parser.add_argument("--replica-url", help="a read replica of --db-url")
    parser.add_argument("--redis-url", help="Redis for the query cache (default: in memory)")
    parser.add_argument("--out", type=Path, help="JSON file (default: results/app-*.json)")
    args = parser.parse_args(argv)

    results = run(
        db_url=args.db_url,
        replica_url=args.replica_url,
        redis_url=args.redis_url,
        requests=args.requests,
        clients=args.clients,
        rounds=args.rounds,
        warmup=args.warmup,
        seed_orders=args.orders,
    )
    _print_table(results)
    ratios = results["ratios"]
    print(
        f"\n  targets: sqlperf >= {RPS_TARGET:.0f}x plain req/s on the read-heavy load; p99 with"
        f" capture on no worse than off, within a {P99_TOLERANCE - 1:.0%} tolerance for noise"
    )
    targets = {
        "read-heavy rps plain / sqlperf (sqlperf >= 3x plain)": (
            1 / ratios["read-heavy rps sqlperf / plain"],
            round(1 / RPS_TARGET, 3),
        ),
        "read-heavy p99 capture on / off": (
            ratios["read-heavy p99 capture on / off"],
            P99_TOLERANCE,
        ),
        "mixed p99 capture on / off": (ratios["mixed p99 capture on / off"], P99_TOLERANCE),
    }
    report_targets("app", results, targets, args.out)
    ceiling = ratios["read-hot rps sqlperf / plain"]
    print(
        f"  read-hot (every request a cache hit): sqlperf {ceiling:.2f}x plain req/s,"
        " the most the cache can give on this endpoint here"
    )
    failed = any(c[w]["errors"] for c in results["configs"].values() for w in WORKLOADS)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
