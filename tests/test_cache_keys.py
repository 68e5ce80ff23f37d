"""Which tables a statement reads and writes, and its cache key."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, func, select

from sqlperf.cache.keys import ALL_TABLES, result_key, tables_of_compiled, tables_written_by_sql

md = MetaData()
users = Table("users", md, Column("id", Integer, primary_key=True), Column("name", String))
orders = Table(
    "orders", md, Column("id", Integer, primary_key=True), Column("user_id", ForeignKey("users.id"))
)
items = Table("items", md, Column("id", Integer, primary_key=True), schema="shop")


def test_tables_read_follows_joins_subqueries_and_ctes():
    cte = select(orders.c.user_id).cte("recent")
    stmt = (
        select(users.c.name)
        .join(orders, orders.c.user_id == users.c.id)
        .where(users.c.id.in_(select(cte.c.user_id)))
        .where(users.c.id > select(func.count(items.c.id)).scalar_subquery())
    )
    assert tables_of_compiled(stmt.compile()) == (ALL_TABLES, "orders", "shop.items", "users")


def test_tables_read_of_a_tableless_or_locking_statement_is_not_cacheable():
    assert tables_of_compiled(select(func.now()).compile()) == ()
    assert tables_of_compiled(select(users.c.id).with_for_update().compile()) == ()


def test_result_key_depends_on_sql_parameters_and_database():
    key = result_key("pg\0test\0", "SELECT * FROM users WHERE id = %(id)s", {"id": 1})
    assert key == result_key("pg\0test\0", "SELECT * FROM users WHERE id = %(id)s", {"id": 1})
    assert key != result_key("pg\0test\0", "SELECT * FROM users WHERE id = %(id)s", {"id": 2})
    assert key != result_key("pg\0prod\0", "SELECT * FROM users WHERE id = %(id)s", {"id": 1})
    assert key != result_key("pg\0test\0", "SELECT * FROM orders WHERE id = %(id)s", {"id": 1})


@pytest.mark.parametrize(
    ("sql", "written"),
    [
        ("SELECT * FROM users", ()),
        ("select count(*) from orders o join users u on u.id = o.user_id", ()),
        ("BEGIN", ()),
        ("INSERT INTO users (name) VALUES (%s)", ("users",)),
        ("insert ignore into `users` values (1)", ("users",)),
        ("REPLACE INTO users VALUES (1)", ("users",)),
        ('UPDATE "orders" SET x = 1', ("orders",)),
        ("DELETE FROM shop.items WHERE id = 1", ("shop.items", "items")),
        ("TRUNCATE TABLE orders", ("orders",)),
        ("LOAD DATA LOCAL INFILE '/tmp/a b.tsv' INTO TABLE `orders` (id, x)", ("orders",)),
        ("load data infile 'f' replace into table shop.items", ("shop.items", "items")),
        ("UPDATE users SET a = 1;", ("users",)),
        ("UPDATE users SET a = 1 FROM orders WHERE orders.user_id = users.id", ("users",)),
        ("UPDATE orders o JOIN users u ON u.id = o.user_id SET u.name = 'x'", (ALL_TABLES,)),
        ("UPDATE orders, users SET users.name = 'x'", (ALL_TABLES,)),
        ("DELETE o, u FROM orders o JOIN users u ON u.id = o.user_id", (ALL_TABLES,)),
        ("INSERT INTO users SELECT * FROM staging", ("users",)),
        ("UPDATE users SET a = 1; DELETE FROM orders", (ALL_TABLES,)),
        ("WITH x AS (SELECT 1) UPDATE users SET a = 1", (ALL_TABLES,)),
        ("SELECT nextval('s')", (ALL_TABLES,)),
        ("CALL refresh_all()", (ALL_TABLES,)),
        ("ALTER TABLE users ADD COLUMN z int", (ALL_TABLES,)),
        ("SELECT * INTO copy FROM users", (ALL_TABLES,)),
    ],
)
def test_tables_written_by_sql(sql: str, written: tuple[str, ...]):
    assert tables_written_by_sql(sql) == written
