"""Alembic environment for sqlperf's own tables (``sqlperf.schema.metadata``).

sqlperf's history lives in ``sqlperf_alembic_version``, so it never touches the
``alembic_version`` table of the application that shares the database, and
autogenerate only looks at tables named ``sqlperf_*`` (see
:func:`sqlperf.schema.include_name`).

Where the database comes from, first match wins:

1. ``config.attributes["connection"]``: a ``Connection`` handed over by the
   caller (this is what :func:`sqlperf.migrate.upgrade` does); the caller owns
   its transaction and commits it;
2. ``alembic -x url=...`` on the command line;
3. ``sqlalchemy.url`` in the configuration (``alembic.ini``).

Offline mode (``alembic upgrade head --sql``) renders the SQL for the URL's
dialect without connecting.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from sqlperf.exceptions import ConfigurationError
from sqlperf.schema import VERSION_TABLE, include_name, metadata

config = context.config
target_metadata = metadata

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    # Only when run from an .ini file by the ``alembic`` command: a library
    # call must not reconfigure the application's logging.
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise ConfigurationError(
            "no database for sqlperf's migrations: pass a connection in "
            "config.attributes['connection'], `-x url=...`, or set sqlalchemy.url"
        )
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        # SQLite cannot ALTER most things: emit "move and copy" batch operations.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emit the migrations' SQL for the configured URL without connecting."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the given connection, or on one made from the URL."""
    given = config.attributes.get("connection")
    if given is not None:
        _configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
