"""A table of every awkward type for the bulk tests, on any of the three databases."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    func,
    select,
)

UTC = dt.timezone.utc


class Db:
    """An engine and an empty table of its own, dropped afterwards."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tz = engine.dialect.name == "postgresql"  # the only one of the three keeping zones
        self.metadata = MetaData()
        self.table = Table(
            f"sqlperf_bulk_{uuid.uuid4().hex[:10]}",
            self.metadata,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("name", String(100)),
            Column("at", DateTime(timezone=self.tz)),
            Column("amount", Numeric(12, 4)),
            Column("doc", JSON),
            # A row with a negative amount fails on every database: a failing batch.
            CheckConstraint("amount IS NULL OR amount >= 0"),
        )
        self.metadata.create_all(engine)

    def rows(self, n: int, start: int = 1) -> list[dict[str, Any]]:
        tz = UTC if self.tz else None
        return [
            {
                "id": i,
                "name": None if i % 7 == 0 else f"name {i} ü€😀\t\"'\\N",
                "at": None if i % 5 == 0 else dt.datetime(2024, 5, 6, 7, 8, i % 60, tzinfo=tz),
                "amount": None if i % 3 == 0 else Decimal(i) / 8,
                "doc": None if i % 4 == 0 else {"i": i, "tags": ["a", "ü"], "nested": {"x": None}},
            }
            for i in range(start, start + n)
        ]

    def read(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(self.table).order_by("id"))]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.table)).scalar_one())
