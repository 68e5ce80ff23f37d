"""Keyset pagination: pages and streams of a SELECT by its ORDER BY, at any depth.

``OFFSET n`` makes the database walk past ``n`` rows; keyset pagination instead
asks for the rows after the last one seen, ``WHERE (ordering) > (boundary)``,
which an index on the ordering answers directly, so the ten-thousandth page
costs what the first does.

The ordering is read from the statement's ``ORDER BY``: several columns, mixed
``ASC``/``DESC``, ``nulls_first()``/``nulls_last()`` and each dialect's default
place for NULLs (PostgreSQL sorts them as the largest values; MySQL, MariaDB and
SQLite as the smallest), labelled expressions and columns of joined entities.
When the ordering is not unique (no primary key, no unique constraint of
NOT NULL columns among its columns), the primary key of the statement's first
table is appended in the direction of the last column.

The boundary condition takes one of two forms:

* **row value**, ``(a, b) > (:a, :b)``: on PostgreSQL and SQLite, when every
  column goes the same way and none can be NULL. The planner reads it as one
  range of a composite index.
* **expanded**, ``a > :a OR (a = :a AND b > :b)``, with NULLs placed where the
  ordering puts them, otherwise (and always on MySQL and MariaDB, whose planners
  do not turn a row comparison into an index range). When the first column cannot
  be NULL, ``a >= :a AND (...)`` is added in front so the index still bounds the scan.

On MySQL and MariaDB, which have no ``NULLS FIRST``/``NULLS LAST``, a requested
NULL placement that differs from the default is rendered as ``a IS NULL`` ahead
of ``a`` in the ORDER BY.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    false,
    func,
    inspect,
    or_,
    select,
    tuple_,
)
from sqlalchemy.engine import Dialect, Result
from sqlalchemy.orm import Session
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    ColumnClause,
    ColumnElement,
    Label,
    TextClause,
    UnaryExpression,
    _label_reference,
    _textual_label_reference,
)
from sqlalchemy.sql.schema import Column, Table

from sqlperf.exceptions import InvalidCursor, PaginationError
from sqlperf.pagination.cursor import decode_cursor, encode_cursor

if TYPE_CHECKING:
    from typing import TypeAlias

    from typing_extensions import Unpack

    #: Any ``select()``, whatever its columns (SQLAlchemy 2.1's ``Select`` is variadic:
    #: ``Select[Any]`` would admit one-column selects only).
    _AnySelect: TypeAlias = Select[Unpack[tuple[Any, ...]]]

__all__ = ["Page", "Totals", "iter_keyset", "keyset_page"]

T = TypeVar("T")

Totals = Literal["exact", "estimate"]
Target = Session | Connection | Engine

#: Dialects that sort NULL above every value (the rest sort it below).
_NULLS_LARGE = frozenset({"postgresql", "oracle"})
#: Dialects whose planners turn a row-value comparison into an index range.
_ROW_VALUES = frozenset({"postgresql", "sqlite"})
#: Dialects without NULLS FIRST / NULLS LAST.
_NO_NULLS_SYNTAX = frozenset({"mysql", "mariadb"})
_KEY_LABEL = "_sqlperf_key_{}"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paginated query.

    Attributes:
        items: the page's rows: ORM objects when the statement selects one entity,
            otherwise ``Row`` objects of the statement's own columns.
        next_cursor / prev_cursor: pass as ``after=`` / ``before=`` to get the next /
            previous page; ``None`` when there is none.
        has_next / has_prev: whether those pages exist (``next_cursor is not None``).
            An empty page, reached with a cursor past either end, has neither.
        total: the row count of the whole query, when asked for (``total=``).
        total_is_estimate: the total is the planner's estimate, not a count.

    A ``Page`` of plain values serialises as it is (it is a dataclass: FastAPI and
    Flask's ``jsonify`` accept it); :meth:`to_dict` gives a dict to adapt the items.
    """

    items: list[T]
    next_cursor: str | None
    prev_cursor: str | None
    has_next: bool
    has_prev: bool
    total: int | None = None
    total_is_estimate: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The page as a dict, items as they are (turn ORM objects into dicts yourself)."""
        out = asdict(self)
        out["items"] = list(self.items)
        return out


@dataclass(frozen=True, slots=True)
class _Key:
    expr: ColumnElement[Any]
    desc: bool
    nulls_after: bool  # where NULLs sit in the declared order: after every value
    nullable: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one statement's pagination needs, worked out once per call."""

    stmt: _AnySelect  # the user's statement, ORDER BY removed, key columns added
    source: _AnySelect  # the user's statement, ORDER BY removed (for totals)
    keys: tuple[_Key, ...]
    ordering: str  # the cursor's ordering description
    dialect: str
    width: int  # the statement's own result columns
    entity: bool  # the statement selects one ORM entity
    positions: tuple[int, ...]  # where each key's value is in a result row
    narrow: bool  # key columns were added: rows are cut back to ``width`` for the caller


def keyset_page(
    target: Target,
    stmt: _AnySelect,
    per_page: int,
    after: str | None = None,
    before: str | None = None,
    *,
    last: bool = False,
    signing_key: str | bytes | None = None,
    total: Totals | None = None,
) -> Page[Any]:
    """Fetch one page of ``stmt`` in the order of its ``ORDER BY``.

    Args:
        target: a ``Session`` (a ``RoutingSession`` sends it to a replica), a
            ``Connection``, or an ``Engine`` (Core statements only).
        stmt: a ``select()`` with an ``ORDER BY`` and no ``LIMIT``/``OFFSET``.
        per_page: rows per page, at least 1.
        after: a ``next_cursor``: the page after it.
        before: a ``prev_cursor``: the page before it.
        last: the last page (with neither cursor).
        signing_key: sign cursors with this HMAC key, and accept only cursors
            signed with it.
        total: also count the rows: ``"exact"`` (a ``count(*)``) or ``"estimate"``
            (the planner's row estimate on PostgreSQL and MySQL/MariaDB, an exact
            count elsewhere; ``Page.total_is_estimate`` says which).

    Returns:
        The :class:`Page`.

    Raises:
        InvalidCursor: a cursor is malformed, tampered with, or was made for
            another ordering (a ``ValueError``: answer 400).
        PaginationError: the statement or the arguments cannot be paginated.

    Example::

        stmt = select(Order).order_by(Order.created_at.desc(), Order.id.desc())
        page = keyset_page(session, stmt, per_page=50, after=request.args.get("after"))
        return {"orders": [o.to_dict() for o in page.items], "next": page.next_cursor}
    """
    if per_page < 1:
        raise PaginationError(f"per_page must be at least 1, not {per_page!r}")
    if (after is not None) + (before is not None) + last > 1:
        raise PaginationError("give at most one of after=, before= and last=True")
    if total not in (None, "exact", "estimate"):
        raise PaginationError(f"total must be 'exact', 'estimate' or None, not {total!r}")
    plan = _plan(target, stmt)
    reverse = before is not None or last
    cursor = after if after is not None else before
    bound = None
    if cursor is not None:
        bound = _check_values(plan, decode_cursor(cursor, ordering=plan.ordering, key=signing_key))
    items, keys, more = _fetch(target, plan, bound, reverse=reverse, limit=per_page)

    def token(values: Sequence[Any] | None) -> str | None:
        if values is None:
            return None
        return encode_cursor(values, ordering=plan.ordering, key=signing_key)

    first, final = (keys[0], keys[-1]) if keys else (None, None)
    if reverse:  # the rows before the cursor (or the end): the ones after it exist
        next_cursor = token(final) if before is not None else None
        prev_cursor = token(first) if more else None
    else:
        next_cursor = token(final) if more else None
        prev_cursor = token(first) if after is not None else None
    count, estimate = (None, False) if total is None else _total(target, plan, total)
    return Page(
        items=items,
        next_cursor=next_cursor,
        prev_cursor=prev_cursor,
        has_next=next_cursor is not None,
        has_prev=prev_cursor is not None,
        total=count,
        total_is_estimate=estimate,
    )


def _check_values(plan: _Plan, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Refuse cursor values that do not fit the ordering's columns (a forged unsigned cursor)."""
    if len(values) != len(plan.keys):
        raise InvalidCursor("invalid cursor: made for a different ordering")
    for k, value in zip(plan.keys, values, strict=True):
        if value is None:
            if not k.nullable:
                raise InvalidCursor("invalid cursor: a value is missing")
            continue
        try:
            expected = k.expr.type.python_type
        except NotImplementedError:  # a type that does not say: the database will
            continue
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise InvalidCursor("invalid cursor: a value of the wrong type")
    return values


def iter_keyset(target: Target, stmt: _AnySelect, batch_size: int = 1000) -> Iterator[Any]:
    """Yield every row of ``stmt`` in order, ``batch_size`` rows per query.

    Memory stays constant whatever the size of the result: each batch is one
    keyset query after the last row of the one before (no cursor held open, no
    OFFSET). Rows committed meanwhile are seen or not depending on where they
    sort; none is yielded twice. For exports and batch jobs.

    Example::

        for order in iter_keyset(session, select(Order).order_by(Order.id), 5000):
            writer.writerow(order.as_row())
            session.expunge(order)  # keep the session's identity map small too
    """
    if batch_size < 1:
        raise PaginationError(f"batch_size must be at least 1, not {batch_size!r}")
    plan = _plan(target, stmt)
    bound: tuple[Any, ...] | None = None
    while True:
        items, keys, more = _fetch(target, plan, bound, reverse=False, limit=batch_size)
        yield from items
        if not more:
            return
        bound = tuple(keys[-1])


# -- the statement ------------------------------------------------------------------------


def _dialect(target: Target) -> Dialect:
    if isinstance(target, Session):
        # get_bind() without a statement would make a RoutingSession pin itself to
        # its primary; its engines share one dialect, so its primary's is read instead.
        bind = target.bind if target.bind is not None else getattr(target, "primary", None)
        if not isinstance(bind, Engine | Connection):
            bind = target.get_bind()
        return bind.dialect
    if isinstance(target, Connection | Engine):
        return target.dialect
    raise PaginationError(
        f"keyset pagination needs a Session, Connection or Engine, not {type(target).__name__}"
    )


def _plan(target: Target, stmt: _AnySelect) -> _Plan:
    if not isinstance(stmt, Select):
        raise PaginationError(f"keyset pagination needs a select(), not {type(stmt).__name__}")
    if stmt._limit_clause is not None or stmt._offset_clause is not None:
        raise PaginationError(
            "the statement already has a LIMIT or OFFSET: remove it, pages set their own"
        )
    clauses = stmt._order_by_clauses
    if not clauses:
        raise PaginationError(
            "keyset pagination needs an ORDER BY: add .order_by(...) to the statement"
        )
    dialect = _dialect(target)
    name = dialect.name
    large = name in _NULLS_LARGE
    keys = [_key(stmt, clause, large) for clause in clauses]
    descriptions = stmt.column_descriptions
    keys += _uniqueness(stmt, descriptions, keys)
    # What a cursor belongs to; NULL placement only where it changes the order.
    ordering = ", ".join(
        f"{_describe(k.expr)} {'DESC' if k.desc else 'ASC'}"
        + (f" NULLS {'LAST' if k.nulls_after else 'FIRST'}" if k.nullable else "")
        for k in keys
    )
    entities = [_is_entity(d) for d in descriptions]
    entity = entities == [True]
    if isinstance(target, Engine | Connection) and any(d.get("entity") for d in descriptions):
        raise PaginationError("an ORM statement needs a Session, not a Connection or Engine")
    width = len(descriptions)  # an ORM entity is one result column
    stmt = source = stmt.order_by(None)
    # With an ORM entity among the results, a row has fewer columns than the select list.
    plain = not any(entities)
    selected = _positions(stmt, keys) if plain else None
    if selected is None:  # the key values come from columns added after the statement's own
        extra = [k.expr.label(_KEY_LABEL.format(i)) for i, k in enumerate(keys)]
        stmt = stmt.add_columns(*extra)
        selected = tuple(range(width, width + len(keys)))
    return _Plan(
        stmt=stmt,
        source=source,
        keys=tuple(keys),
        ordering=ordering,
        dialect=name,
        width=width,
        entity=entity,
        positions=selected,
        narrow=selected[0] >= width,
    )


def _positions(stmt: _AnySelect, keys: Sequence[_Key]) -> tuple[int, ...] | None:
    """Where each key is among the statement's own result columns, if all of them are."""
    inner = [c.element if isinstance(c, Label) else c for c in stmt.selected_columns]
    by_identity = {id(c): i for i, c in enumerate(inner)}
    # An ORM attribute's column is annotated anew in each statement: also by the
    # column under the annotations, before a structural comparison (which is slow).
    for i, c in enumerate(inner):
        by_identity.setdefault(id(c._deannotate()), i)
    found = []
    for k in keys:
        index = by_identity.get(id(k.expr))
        if index is None:
            index = by_identity.get(id(k.expr._deannotate()))
        if index is None:  # an expression built twice (func.lower(x) in both places)
            index = next((i for i, c in enumerate(inner) if c.compare(k.expr)), None)
            if index is None:
                return None
        found.append(index)
    return tuple(found)


def _describe(expr: ColumnElement[Any]) -> str:
    """``table.column`` for a column (str() would compile it), the SQL of anything else."""
    table = getattr(expr, "table", None)
    name = getattr(table, "name", None)
    if isinstance(expr, Column | ColumnClause) and isinstance(name, str):
        return f"{name}.{expr.name}"
    return str(expr)


def _is_entity(description: dict[str, Any]) -> bool:
    """Whether a ``column_descriptions`` entry is a whole ORM entity (one result column)."""
    if description.get("entity") is None:  # a Core column: no inspection needed
        return False
    info = inspect(description["expr"], raiseerr=False)
    return bool(getattr(info, "is_mapper", False) or getattr(info, "is_aliased_class", False))


def _key(stmt: _AnySelect, clause: Any, large: bool) -> _Key:
    desc = False
    nulls: str | None = None
    element = clause
    while True:
        if isinstance(element, UnaryExpression) and element.modifier is not None:
            modifier = element.modifier
            if modifier is operators.desc_op:
                desc = True
            elif modifier is operators.nulls_first_op:
                nulls = nulls or "first"
            elif modifier is operators.nulls_last_op:
                nulls = nulls or "last"
            elif modifier is not operators.asc_op:
                break
            element = element.element
        elif isinstance(element, _textual_label_reference | TextClause):
            name = (
                element.element if isinstance(element, _textual_label_reference) else element.text
            )
            named = stmt.selected_columns.get(name.strip())
            if named is None:
                raise PaginationError(
                    f"ORDER BY {name!r} names no column of the statement: order by a "
                    "column or a label of the select list"
                )
            element = named
        elif isinstance(element, _label_reference | Label):
            element = element.element
        else:
            break
    if not isinstance(element, ColumnElement):
        raise PaginationError(f"cannot paginate by ORDER BY {clause}: it is not a column")
    nullable = bool(getattr(element, "nullable", True)) if isinstance(element, Column) else True
    nulls_after = (nulls == "last") if nulls is not None else (large != desc)
    return _Key(element, desc, nulls_after, nullable)


def _uniqueness(
    stmt: _AnySelect, descriptions: Sequence[dict[str, Any]], keys: list[_Key]
) -> list[_Key]:
    """The primary-key columns to append when ``keys`` do not identify a row."""
    table = _first_table(stmt, descriptions)
    if table is None:
        raise PaginationError(
            "cannot tell whether the ORDER BY is unique (the statement selects from no "
            "table): order by a unique column last"
        )
    columns = [k.expr for k in keys if not k.nullable]

    def covered(group: Sequence[Any]) -> bool:
        return bool(group) and all(
            any(c.shares_lineage(g) for c in columns) and not g.nullable for g in group
        )

    unique_groups: list[Sequence[Any]] = [list(table.primary_key.columns)]
    base = getattr(table, "element", table)  # an alias's table
    if isinstance(base, Table):
        for constraint in base.constraints:
            if constraint.__visit_name__ == "unique_constraint":
                unique_groups.append([table.c[c.key] for c in constraint.columns])  # type: ignore[attr-defined]
        for index in base.indexes:
            if index.unique:
                unique_groups.append([table.c[c.key] for c in index.columns if c.key in table.c])
        unique_groups += [[table.c[c.key]] for c in base.columns if c.unique]
    if any(covered(group) for group in unique_groups):
        return []
    primary = list(table.primary_key.columns)
    if not primary:
        raise PaginationError(
            f"the ORDER BY is not unique and {table} has no primary key: "
            "order by a unique NOT NULL column last"
        )
    desc = keys[-1].desc
    return [
        _Key(column, desc, False, False)
        for column in primary
        if not any(k.expr.shares_lineage(column) for k in keys)
    ]


def _first_table(stmt: _AnySelect, descriptions: Sequence[dict[str, Any]]) -> Any:
    entity = descriptions[0].get("entity") if descriptions else None
    if entity is not None:
        info = inspect(entity)
        selectable = getattr(info, "selectable", None)
        if selectable is not None and hasattr(selectable, "primary_key"):
            return selectable
    # columns_clause_froms needs no compilation (get_final_froms compiles the statement).
    froms = stmt.columns_clause_froms or stmt.get_final_froms()
    if not froms:
        return None
    first = froms[0]
    while hasattr(first, "left"):  # a join: its leftmost table
        first = first.left
    return first if hasattr(first, "primary_key") else None


# -- the queries --------------------------------------------------------------------------


def _order_by(plan: _Plan, reverse: bool) -> list[Any]:
    large = plan.dialect in _NULLS_LARGE
    clauses: list[Any] = []
    for k in plan.keys:
        desc = k.desc != reverse
        nulls_after = k.nulls_after != reverse
        base = k.expr.desc() if desc else k.expr.asc()
        if not k.nullable or nulls_after == (large != desc):
            clauses.append(base)
        elif plan.dialect in _NO_NULLS_SYNTAX:
            is_null = k.expr.is_(None)
            clauses += [is_null.asc() if nulls_after else is_null.desc(), base]
        else:
            clauses.append(base.nulls_last() if nulls_after else base.nulls_first())
    return clauses


def _boundary(plan: _Plan, values: Sequence[Any], reverse: bool) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the (possibly reversed) ordering."""
    keys = plan.keys
    binds = [bindparam(None, v, type_=k.expr.type) for k, v in zip(keys, values, strict=True)]
    same_way = all(k.desc == keys[0].desc for k in keys)
    if plan.dialect in _ROW_VALUES and same_way and not any(k.nullable for k in keys):
        if len(keys) == 1:
            column, bind = keys[0].expr, binds[0]
            return column < bind if keys[0].desc != reverse else column > bind
        row, bound = tuple_(*(k.expr for k in keys)), tuple_(*binds)
        return row < bound if keys[0].desc != reverse else row > bound
    condition: ColumnElement[bool] | None = None  # None: nothing is after on the keys left
    for k, value, bind in reversed(list(zip(keys, values, binds, strict=True))):
        desc, nulls_after = k.desc != reverse, k.nulls_after != reverse
        later: ColumnElement[bool] | None
        if value is None:
            later = None if nulls_after else k.expr.is_not(None)
            equal = k.expr.is_(None)
        else:
            later = k.expr < bind if desc else k.expr > bind
            if k.nullable and nulls_after:
                later = or_(later, k.expr.is_(None))
            equal = k.expr == bind
        tie = and_(equal, condition) if condition is not None else None
        parts = [p for p in (later, tie) if p is not None]
        condition = or_(*parts) if len(parts) > 1 else (parts[0] if parts else None)
    if condition is None:
        return false()
    first, value = keys[0], values[0]
    if not first.nullable and value is not None:  # lets the index bound the scan
        desc = first.desc != reverse
        prefix = first.expr <= binds[0] if desc else first.expr >= binds[0]
        condition = and_(prefix, condition)
    return condition


def _fetch(
    target: Target,
    plan: _Plan,
    bound: Sequence[Any] | None,
    *,
    reverse: bool,
    limit: int,
) -> tuple[list[Any], list[tuple[Any, ...]], bool]:
    """Rows after ``bound`` (or from the start): items, their key values, and whether more."""
    stmt = plan.stmt.order_by(*_order_by(plan, reverse)).limit(limit + 1)
    if bound is not None:
        stmt = stmt.where(_boundary(plan, bound, reverse))
    if isinstance(target, Engine):
        with target.connect() as conn:
            rows, items = _rows(conn.execute(stmt), plan)
    else:
        rows, items = _rows(target.execute(stmt), plan)
    more = len(rows) > limit
    del rows[limit:], items[limit:]
    if reverse:
        rows.reverse()
        items.reverse()
    positions = plan.positions
    return items, [tuple(row[i] for i in positions) for row in rows], more


def _rows(result: Result[Any], plan: _Plan) -> tuple[list[Any], list[Any]]:
    """The full rows (for the key values) and the items handed to the caller."""
    if plan.entity:
        rows = list(result.all())
        return rows, [row[0] for row in rows]
    if not plan.narrow:
        rows = list(result.all())
        return rows, list(rows)
    # Rows of the statement's own columns, without the key columns added after them.
    frozen = result.freeze()
    return list(frozen().all()), list(frozen().columns(*range(plan.width)).all())


# -- totals -------------------------------------------------------------------------------


def _total(target: Target, plan: _Plan, kind: Totals) -> tuple[int, bool]:
    base = plan.source
    if kind == "estimate" and plan.dialect in {"postgresql", "mysql", "mariadb"}:
        estimate = _estimate(target, base, plan.dialect)
        if estimate is not None:
            return estimate, True
    count = select(func.count()).select_from(base.subquery())
    if isinstance(target, Engine):
        with target.connect() as conn:
            return int(conn.execute(count).scalar_one()), False
    return int(target.execute(count).scalar_one()), False


def _estimate(target: Target, stmt: _AnySelect, dialect: str) -> int | None:
    """The planner's row estimate for ``stmt``: PostgreSQL's plan rows, MySQL's ``rows``."""
    if isinstance(target, Engine):
        with target.connect() as conn:
            return _estimate(conn, stmt, dialect)
    conn = (
        target.connection(bind_arguments={"clause": stmt})
        if isinstance(target, Session)
        else target
    )
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params: Any = compiled.params
    if compiled.positiontup is not None:
        params = tuple(compiled.params[name] for name in compiled.positiontup)
    if dialect == "postgresql":
        row = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + compiled.string, params).scalar_one()
        plan = json.loads(row) if isinstance(row, str) else row
        return int(plan[0]["Plan"]["Plan Rows"])
    estimate = 1.0
    for line in conn.exec_driver_sql("EXPLAIN " + compiled.string, params).mappings():
        estimate *= float(line.get("rows") or 1) * float(line.get("filtered") or 100) / 100
    return round(estimate)
