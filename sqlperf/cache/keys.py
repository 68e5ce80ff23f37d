"""What a statement reads and writes, and the key its result is cached under."""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.expression import TableClause

__all__ = [
    "ALL_TABLES",
    "result_key",
    "tables_of_compiled",
    "tables_written_by_sql",
]

#: Stands for "every table": a statement whose writes cannot be parsed bumps it,
#: and every cached entry depends on it.
ALL_TABLES = "*"


def _table_name(t: TableClause) -> str:
    return f"{t.schema}.{t.name}" if t.schema else t.name


class Memo:
    """A small thread-safe bounded LRU, keyed by SQLAlchemy statement cache keys."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self.data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            value = self.data.get(key, default)
            if value is not default:
                self.data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        """Remember ``value``, forgetting the least recently used beyond ``size``."""
        with self._lock:
            self.data[key] = value
            if len(self.data) > self.size:
                self.data.popitem(last=False)


def result_key(prefix: str, statement: str, parameters: Any) -> str:
    """A key stable across processes: the SQL text sent to the database and its
    parameters (by ``repr``), hashed. ``prefix`` names the namespace, dialect and
    database, so equal SQL on two databases never shares an entry."""
    raw = f"{prefix}{statement}\0{parameters!r}".encode()
    return hashlib.blake2b(raw, digest_size=20).hexdigest()


def tables_of_compiled(compiled: Any) -> tuple[str, ...]:
    """The tables a compiled ``SELECT`` reads (joins, subqueries, CTEs included),
    sorted, plus :data:`ALL_TABLES`; ``()`` if it must not be cached (no table,
    ``FOR UPDATE``). For ORM statements this is the
    statement as compiled, with its eager joins. Memoized on the compiled object,
    which SQLAlchemy itself caches."""
    found: tuple[str, ...] | None = compiled.__dict__.get("_sqlperf_cache_tables")
    if found is None:
        stmt = getattr(compiled.compile_state, "statement", None)
        if stmt is None:
            stmt = compiled.statement
        # A locking read (FOR UPDATE) must reach the database.
        found = () if getattr(stmt, "_for_update_arg", None) is not None else _tables_in(stmt)
        compiled.__dict__["_sqlperf_cache_tables"] = found
    return found


def _tables_in(stmt: ClauseElement) -> tuple[str, ...]:
    names = {_table_name(e) for e in visitors.iterate(stmt) if isinstance(e, TableClause)}
    return (ALL_TABLES, *sorted(names)) if names else ()


_DML = re.compile(
    r"^\s*(?:WITH\b.*?\)\s*)?(?:INSERT\s+(?:IGNORE\s+)?INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM|"
    r"MERGE\s+INTO|TRUNCATE(?:\s+TABLE)?|"
    # MySQL's LOAD DATA [LOCAL] INFILE 'file' [REPLACE|IGNORE] INTO TABLE t
    r"LOAD\s+DATA\s+(?:LOW_PRIORITY\s+|CONCURRENT\s+)?(?:LOCAL\s+)?INFILE\s+'[^']*'\s+"
    r"(?:REPLACE\s+|IGNORE\s+)?INTO\s+TABLE)\s+((?:ONLY\s+)?[\w.\"`\[\]]+)",
    re.I | re.S,
)
_READ = re.compile(r"^\s*\(*\s*(SELECT|SHOW|EXPLAIN|VALUES|PRAGMA|DESCRIBE)\b", re.I)
_WRITE_WORD = re.compile(
    r"\b(INSERT|UPDATE|DELETE|MERGE|REPLACE|TRUNCATE|CREATE|ALTER|DROP|INTO|NEXTVAL|SETVAL|CALL|DO)\b",
    re.I,
)
_MULTI_TABLE = re.compile(r"^[^;]*?(,|\bJOIN\b)[^;]*?\bSET\b", re.I | re.S)
_TRANSACTION = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|SET|START)\b", re.I)


@functools.lru_cache(maxsize=4096)
def tables_written_by_sql(sql: str) -> tuple[str, ...]:
    """Tables a raw SQL string writes: ``()`` for a plain read (or transaction
    control), the table of a single-table DML, or ``(ALL_TABLES,)`` when the
    statement may write and cannot be understood (the safe answer).

    Example::

        >>> tables_written_by_sql('UPDATE "users" SET name = %s')
        ('users',)
        >>> tables_written_by_sql("DELETE FROM public.users")
        ('public.users', 'users')
        >>> tables_written_by_sql("SELECT 1")
        ()
        >>> tables_written_by_sql("CALL refresh_everything()")
        ('*',)
    """
    if _TRANSACTION.match(sql):
        return ()
    if _READ.match(sql) and not _WRITE_WORD.search(sql):
        return ()
    body = sql.strip().rstrip(";")
    match = _DML.match(body)
    if (
        match
        and ";" not in body
        and not re.search(r"\bWITH\b", body[: match.start(1)], re.I)
        # A multi-table UPDATE/DELETE (MySQL "UPDATE a JOIN b ... SET b.x") may write
        # any of its tables: not understood.
        and not _MULTI_TABLE.match(body[match.end(1) :])
    ):
        name = re.sub(r"^ONLY\s+", "", match.group(1), flags=re.I)
        name = name.replace('"', "").replace("`", "").replace("[", "").replace("]", "")
        # "public.users" may be read as "users" (no schema in the metadata): bump both.
        bare = name.rsplit(".", 1)[-1]
        return (name,) if bare == name else (name, bare)
    return (ALL_TABLES,)
