"""Cache hits for plain ORM selects, answered before SQLAlchemy opens a connection.

The general path (:mod:`sqlperf.cache.replay`) answers a hit at the DB-API step,
so SQLAlchemy still checks out a connection, builds an execution context and runs
its loading machinery: correct for every statement, but that pipeline costs more
than the lookup itself. For the common shapes, a *plan* learned once per
statement shape rebuilds the result straight from the stored rows:

* ``select(Model)``, ``select(A, B).join(...)`` and column selects, with no loader
  options, no ``FOR UPDATE``, on mappers without inheritance, eager relationships
  or load hooks (``@reconstructor``, ``load`` events);
* an entity already in the session's identity map is returned as it is (as a
  query would); a new one is given its identity and loaded values and joins the
  identity map clean, the steps of SQLAlchemy's own loading
  (``orm.loading._instance``), so it is persistent exactly as if a query had
  loaded it. These are SQLAlchemy internals; the tests pin the behaviour.

Everything else goes to the general path, which serves the same entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import Result
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql.selectable import Select

from sqlperf.cache.keys import tables_of_compiled
from sqlperf.cache.options import CacheOption

__all__ = ["FastPlan", "plan_for"]

_LAZY = frozenset({"select", True, "raise", "raise_on_sql", "noload", "write_only", "dynamic"})

Processor = Callable[[Any], Any] | None


class Fallback(Exception):
    """The rows do not fit the plan (e.g. a partial primary key): use the general path."""


@dataclass(frozen=True)
class _Entity:
    identity_class: type[Any]
    new_instance: Callable[[], Any]
    instance_dict: Callable[[Any], dict[str, Any]]
    load_options: tuple[Any, ...]  # options that follow the object's lazy loads
    path: Any
    keys: tuple[str, ...]
    values: Callable[[tuple[Any, ...]], tuple[Any, ...]]  # the entity's values of a row
    pk: Callable[[tuple[Any, ...]], tuple[Any, ...]]  # the primary key among those


@dataclass(frozen=True)
class _Column:
    position: int


@dataclass
class FastPlan:
    """How to rebuild the result of one statement shape from stored rows."""

    engine: Engine
    sql: str
    tables: tuple[str, ...]
    parts: tuple[_Entity | _Column, ...]
    names: tuple[str, ...]
    types: tuple[Any, ...]
    _processors: dict[tuple[Any, ...], tuple[tuple[int, Processor], ...]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        # Columns only, each in its own place: a stored row is already a result row.
        self._rows_as_stored = len(self.parts) == len(self.types) and all(
            type(p) is _Column and p.position == i for i, p in enumerate(self.parts)
        )
        # Shared by every result of this shape, as SQLAlchemy shares a compiled
        # statement's metadata between its cursor results.
        self._metadata = SimpleResultMetaData(self.names)

    def processors(self, description: Sequence[Sequence[Any]]) -> tuple[tuple[int, Processor], ...]:
        """The columns that need a result processor for the driver's type codes, with
        it (``(position, processor)``), memoized."""
        codes = tuple(d[1] for d in description)
        active = self._processors.get(codes)
        if active is None:
            dialect = self.engine.dialect
            active = tuple(
                (i, proc)
                for i, (t, code) in enumerate(zip(self.types, codes, strict=True))
                if (proc := t.dialect_impl(dialect).result_processor(dialect, code)) is not None
            )
            if len(self._processors) < 16:
                self._processors[codes] = active
        return active

    def rows(
        self, description: Sequence[Sequence[Any]], stored: list[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """The stored rows with the types' result processing applied (what the
        driver's rows become in a query's result).

        Raises:
            Fallback: the rows do not fit this plan.
        """
        if len(description) != len(self.types):
            raise Fallback("column count")
        active = self.processors(description)
        if not active:
            return stored
        out = []
        for row in stored:
            values = list(row)
            for i, proc in active:
                values[i] = proc(values[i])  # type: ignore[misc]
            out.append(tuple(values))
        return out

    def result(self, session: Session, rows: list[tuple[Any, ...]]) -> Result[Any]:
        """The ``Result`` the query would have returned for :meth:`rows`' ``rows``, its
        entities in ``session``.

        Raises:
            Fallback: the rows do not fit this plan.
        """
        if self._rows_as_stored:
            return IteratorResult(self._metadata, iter(rows))
        identity_map = session.identity_map
        parts = self.parts
        if len(parts) == 1 and type(parts[0]) is _Entity:
            entity = parts[0]
            objs = [(_instance(session, identity_map, entity, row),) for row in rows]
            return IteratorResult(self._metadata, iter(objs), _source_supports_scalars=False)
        out = [
            tuple(
                _instance(session, identity_map, p, row) if type(p) is _Entity else row[p.position]  # type: ignore[union-attr]
                for p in parts
            )
            for row in rows
        ]
        return IteratorResult(self._metadata, iter(out))


def _instance(session: Session, identity_map: Any, part: _Entity, row: tuple[Any, ...]) -> Any:
    values = part.values(row)
    pk = part.pk(values)
    key = (part.identity_class, pk, None)
    obj = identity_map.get(key)
    if obj is not None:
        return obj
    if None in pk:
        if all(v is None for v in pk):
            return None  # the missing side of an outer join
        raise Fallback("partial primary key")
    # What SQLAlchemy's loading does for a new row (orm.loading._instance): the
    # state gets its identity, its loaded values and joins the identity map, so
    # the object is persistent and clean as if a query had loaded it. (A fresh
    # state has nothing to commit: no history, no expired or modified flags.)
    obj = part.new_instance()
    state = instance_state(obj)
    state.key = key
    state.identity_token = None
    state.session_id = session.hash_key
    state.load_options = part.load_options
    state.load_path = part.path
    part.instance_dict(obj).update(zip(part.keys, values, strict=True))
    identity_map._add_unpresent(state, key)
    return obj


def plan_for(stmt: Any, engine: Engine) -> FastPlan | None:
    """A plan for ``stmt`` on ``engine``, or ``None`` if its shape needs the general path."""
    if (
        type(stmt) is not Select
        or stmt._for_update_arg is not None
        # loader options (joinedload, load_only, ...) change what is loaded
        or any(type(o) is not CacheOption for o in stmt._with_options)
    ):
        return None
    descriptions = stmt.column_descriptions
    compiled: Any = stmt.compile(engine)
    result_columns = compiled._result_columns
    tables = tables_of_compiled(compiled)
    if not tables:
        return None
    parts: list[_Entity | _Column] = []
    names: list[str] = []
    pos = 0
    for d in descriptions:
        entity = d.get("entity")
        if entity is not None and d["expr"] is entity and not d["aliased"]:
            propagated = tuple(
                o for o in stmt._with_options if getattr(o, "propagate_to_loaders", False)
            )
            made = _entity_part(inspect(entity), result_columns, pos, propagated)
            if made is None:
                return None
            parts.append(made)
            pos += len(made.keys)
        else:
            parts.append(_Column(pos))
            pos += 1
        names.append(d["name"])
    if pos != len(result_columns):
        return None
    return FastPlan(
        engine=engine,
        sql=compiled.string,
        tables=tables,
        parts=tuple(parts),
        names=tuple(names),
        types=tuple(rc.type for rc in result_columns),
    )


def _entity_part(
    mapper: Mapper[Any], result_columns: Sequence[Any], start: int, load_options: tuple[Any, ...]
) -> _Entity | None:
    if (
        mapper.inherits is not None
        or mapper.polymorphic_on is not None
        or mapper.with_polymorphic
        or mapper.class_manager.dispatch.load
        or mapper.class_manager.dispatch.refresh
        or any(r.lazy not in _LAZY for r in mapper.relationships)
    ):
        return None
    by_column = {}
    for prop in mapper.column_attrs:
        if len(prop.columns) != 1:
            return None  # a property over several columns
        by_column[id(prop.columns[0])] = prop.key
    positions, keys = [], []
    for i in range(start, len(result_columns)):
        column = next(
            (o._deannotate() for o in result_columns[i].objects if hasattr(o, "_deannotate")), None
        )
        key = by_column.get(id(column))
        if key is None or key in keys:
            break
        positions.append(i)
        keys.append(key)
    pk_keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    if not positions or any(k not in keys for k in pk_keys):
        return None
    return _Entity(
        identity_class=mapper._identity_class,
        new_instance=mapper.class_manager.new_instance,
        instance_dict=mapper.class_manager.dict_getter(),
        load_options=load_options,
        path=mapper._path_registry,
        keys=tuple(keys),
        values=_getter(positions),
        pk=_getter([keys.index(k) for k in pk_keys]),
    )


def _getter(positions: Sequence[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A C-speed ``row -> tuple(row[i] for i in positions)``."""
    if len(positions) == 1:
        one = positions[0]
        return lambda row: (row[one],)
    return itemgetter(*positions)
