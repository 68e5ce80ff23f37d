"""Run sqlperf's own Alembic migrations from Python (``sqlperf db upgrade``).

The migration scripts ship inside the package (``sqlperf/migrations``) and are
found through :mod:`importlib.resources`, so this works from an installed
wheel, from any working directory, and without an ``alembic.ini``. sqlperf's
revision is kept in ``sqlperf_alembic_version``; the application's own
``alembic_version`` is never read or written.

The URL is only ever shown with its password hidden (:func:`sqlperf.safe_url`);
it is not written into the Alembic configuration either: the migrations run
on a connection that this module opens and commits.

Example::

    >>> from sqlperf.migrate import current, upgrade
    >>> upgrade("sqlite://")
    '0002'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import as_file, files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import URL, Connection, Engine
from sqlalchemy.pool import NullPool

from sqlperf.engine import create_optimized_engine
from sqlperf.exceptions import ConfigurationError
from sqlperf.schema import VERSION_TABLE

__all__ = ["current", "upgrade"]


@contextmanager
def _engine(url: str | URL) -> Iterator[Engine]:
    # One short-lived connection: no pool to keep, and no statement timeout,
    # since a later migration may rewrite a large table.
    engine = create_optimized_engine(url, workload="batch", poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _alembic_config(connection: Connection) -> Iterator[Config]:
    with as_file(files("sqlperf").joinpath("migrations")) as location:
        if not (location / "env.py").is_file():
            raise ConfigurationError(
                f"sqlperf's migrations are missing from {location}: reinstall sqlperf"
            )
        config = Config(attributes={"connection": connection})
        config.set_main_option("script_location", str(location))
        yield config


def _current(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(url: str | URL, revision: str = "head") -> str:
    """Upgrade sqlperf's tables in the database at ``url`` to ``revision``.

    Idempotent: at the target revision already, it changes nothing. Runs in
    one transaction where the database has transactional DDL (PostgreSQL,
    SQLite).

    Args:
        url: the application's database, e.g. ``"postgresql+psycopg2://app@db/app"``.
        revision: the target, ``"head"`` (the latest) by default.

    Returns:
        The revision recorded in ``sqlperf_alembic_version`` afterwards.

    Raises:
        ConfigurationError: a bad URL, or a revision that does not exist.
        MissingDependency: the database driver is not installed.
        sqlalchemy.exc.DBAPIError: the database refused the connection or a statement.

    Example::

        >>> upgrade("sqlite://")
        '0002'
    """
    with _engine(url) as engine, engine.begin() as connection:
        with _alembic_config(connection) as config:
            try:
                command.upgrade(config, revision)
            except CommandError as err:
                raise ConfigurationError(f"cannot upgrade sqlperf's schema: {err}") from None
        result = _current(connection)
    if result is None:  # only if someone migrated to "base"
        raise ConfigurationError(f"no sqlperf revision recorded after upgrading to {revision!r}")
    return result


def current(url: str | URL) -> str | None:
    """Return sqlperf's schema revision in the database at ``url``.

    Args:
        url: the application's database.

    Returns:
        The revision in ``sqlperf_alembic_version``, or ``None`` when sqlperf's
        migrations never ran there.

    Raises:
        ConfigurationError: a bad URL.
        MissingDependency: the database driver is not installed.
        sqlalchemy.exc.DBAPIError: the database refused the connection.

    Example::

        >>> current("sqlite://") is None
        True
    """
    with _engine(url) as engine, engine.connect() as connection:
        return _current(connection)
