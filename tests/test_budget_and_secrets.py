"""The pool advisor, and that no password leaks through anything sqlperf produces."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from sqlperf import ConfigurationError, PoolTimeout, check_pool_budget, pool_status, safe_url

MakeEngine = Callable[..., Engine]


def _server_max_connections(engine: Engine) -> int:
    sql = (
        "SHOW max_connections"
        if engine.dialect.name == "postgresql"
        else "SELECT @@max_connections"
    )
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(sql).scalar_one())


def test_budget_fits_and_does_not_fit(server_url: str, make_engine: MakeEngine):
    engine = make_engine(server_url, pool_size=4, max_overflow=2)
    max_conn = _server_max_connections(engine)
    ok = check_pool_budget(engine, workers=2)
    assert ok.fits
    assert (ok.per_worker, ok.needed, ok.max_connections) == (6, 12, max_conn)
    assert ok.available == max_conn - ok.reserved
    assert ok.in_use is not None
    assert ok.in_use >= 1
    assert str(ok).startswith("fits")

    workers = max_conn  # max_conn workers x 6 connections cannot fit
    bad = check_pool_budget(engine, workers=workers)
    assert not bad.fits
    assert bad.needed == workers * 6
    assert "does not fit" in bad.advice
    assert f"raise max_connections to at least {bad.needed + bad.reserved}" in bad.advice


def test_budget_suggests_a_pool_that_fits(postgres_url: str, make_engine: MakeEngine):
    engine = make_engine(postgres_url, pool_size=10, max_overflow=10)
    budget = check_pool_budget(engine, workers=8, reserve=7)
    assert budget.available is not None
    assert not budget.fits  # 8 x 20 = 160 > the default 100
    per = budget.available // 8
    size = max(1, per * 2 // 3)
    assert f"pool_size={size}, max_overflow={per - size} per worker" in budget.advice
    # The suggestion, applied, fits.
    fixed = make_engine(postgres_url, pool_size=size, max_overflow=per - size)
    assert check_pool_budget(fixed, workers=8, reserve=7).fits


def test_budget_sqlite_and_bad_input(sqlite_file_url: str, make_engine: MakeEngine):
    engine = make_engine(sqlite_file_url)
    budget = check_pool_budget(engine, workers=64)
    assert budget.fits
    assert budget.max_connections is None
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ConfigurationError, match="workers"):
            check_pool_budget(engine, workers=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="reserve"):
        check_pool_budget(engine, workers=1, reserve=-1)


PASSWORD = "Sup3r-s3cret-pw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg2://app:{PASSWORD}@127.0.0.1:1/app",
        f"mysql+pymysql://app:{PASSWORD}@127.0.0.1:1/app",
    ],
)
def test_password_never_shown(url: str, make_engine: MakeEngine, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    engine = make_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    shown = [repr(engine), str(engine.url), safe_url(url), safe_url(make_url(url))]
    shown.append(str(pool_status(engine)))
    # A connection that fails: nothing listens on port 1.
    with pytest.raises(Exception) as failed:  # noqa: PT011 - the driver's own error
        engine.connect()
    shown.append(str(failed.value))
    shown.extend(r.getMessage() for r in caplog.records)
    for text_ in shown:
        assert PASSWORD not in text_
    assert any("***" in s for s in shown)


def test_password_not_in_errors_for_bad_options():
    from sqlperf import create_optimized_engine

    with pytest.raises(ConfigurationError) as info:
        create_optimized_engine(f"postgresql+psycopg2://a:{PASSWORD}@h/db", pool_sizee=1)
    assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        create_optimized_engine(f"postgresql+psycopg2://a:{PASSWORD}@h:notaport/db")
    assert PASSWORD not in str(info.value)


def test_pool_timeout_message_has_no_password(postgres_url: str, make_engine: MakeEngine):
    url = make_url(postgres_url).set(password=PASSWORD)  # trust auth ignores the password
    engine = make_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    with engine.connect() as held:
        held.execute(text("SELECT 1"))
        with pytest.raises(PoolTimeout) as info:
            engine.connect()
    assert PASSWORD not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://app:{PASSWORD}@h/db", "postgresql://app:***@h/db"),
        (f"postgresql+psycopg2:/app:{PASSWORD}@h/db", "postgresql+psycopg2:/app:***@h/db"),
        (f"mysql://app:{PASSWORD}:x@y@h", "mysql://app:***@h"),
        ("postgresql://app@h/db", "postgresql://app@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_safe_url_hides_passwords_even_in_unparsable_urls(url: str, shown: str):
    assert safe_url(url) == shown
