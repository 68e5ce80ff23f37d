"""PyMySQL specifics: the rollback that only runs when needed, and TLS on loopback.

PyMySQL sends ``ROLLBACK`` to the server on every ``rollback()`` call, even when
nothing ran since the last commit; SQLAlchemy's pool calls it on every checkin,
so a checkout+checkin costs a round trip (about 150 us on loopback, against
about 10 us on psycopg2, whose libpq knows the transaction state and skips it).

:class:`TrackedConnection` is a PyMySQL connection that remembers whether any
statement or ``BEGIN`` has been sent since the last ``commit()``/``rollback()``
and, if none has, makes ``rollback()`` a no-op. Every statement PyMySQL sends,
through cursors, ``executemany`` or raw use of the connection, goes through
``query()`` or ``begin()``, both of which mark the connection; a statement that
failed marks it too, because it went through ``query()`` first. So the skip is
exact: it never leaves an open transaction (or the locks of a failed statement)
on a pooled connection.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

import pymysql.connections

__all__ = ["TLS_KEYS", "TrackedConnection", "is_local_host"]

#: Connection arguments that mean the user asked for TLS or for a config file
#: that may ask for it; when any is present sqlperf leaves TLS alone.
TLS_KEYS = frozenset(
    {
        "ssl",
        "ssl_ca",
        "ssl_capath",
        "ssl_cert",
        "ssl_key",
        "ssl_key_password",
        "ssl_cipher",
        "ssl_check_hostname",
        "ssl_verify_cert",
        "ssl_verify_identity",
        "ssl_disabled",
        "read_default_file",
        "read_default_group",
    }
)


class TrackedConnection(pymysql.connections.Connection):
    """A PyMySQL connection whose ``rollback()`` skips the round trip when clean."""

    # Conservative start: a new connection is treated as possibly in a transaction.
    sqlperf_dirty = True
    _sock: socket.socket | None

    def query(self, sql: str | bytes, unbuffered: bool = False) -> int:
        """Send a statement, remembering that a transaction may now be open."""
        self.sqlperf_dirty = True
        result: int = super().query(sql, unbuffered)
        return result

    def begin(self) -> None:
        """Send ``BEGIN``."""
        self.sqlperf_dirty = True
        super().begin()

    def commit(self) -> None:
        """Send ``COMMIT``."""
        super().commit()
        self.sqlperf_dirty = False

    def set_tcp_timeouts(self, seconds: int) -> None:
        """Let the kernel fail reads and writes on a dead peer within about ``seconds``.

        Sets TCP keepalives (idle 30 s, interval 10 s, 3 probes) and
        ``TCP_USER_TIMEOUT``, as libpq does for PostgreSQL. A blocked ``recv`` or
        ``send`` then fails with ``ETIMEDOUT``, which PyMySQL reports as "Lost
        connection" (2013). PyMySQL's own ``read_timeout``/``write_timeout``
        would put the socket in Python's timeout mode, which polls before every
        ``recv``/``send`` and cost about 20% of query throughput with 16 threads
        here; a long query on a live server is the server-side statement
        timeout's job, which also stops the query. Unix sockets are left alone.
        """
        sock = self._sock
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))

    def rollback(self) -> None:
        """Send ``ROLLBACK``, unless nothing was sent since the last commit/rollback."""
        if self.sqlperf_dirty:
            super().rollback()
            self.sqlperf_dirty = False


def is_local_host(cparams: Mapping[str, Any]) -> bool:
    """True when the connection goes over a unix socket or to a loopback address."""
    if cparams.get("unix_socket"):
        return True
    host = str(cparams.get("host") or "localhost")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
