"""The ``sqlperf`` command (also ``python -m sqlperf``).

::

    sqlperf demo [--url URL | --db PATH] [--replica-url URL] [--redis-url URL]
                 [--out DIR] [--orders N] [--seconds S] [--threads N] [--workers N]
                 [--no-notebooks]
    sqlperf report LOG_OR_URL [--format text|json|markdown|html] [-o FILE] [--top N]
    sqlperf diff BEFORE AFTER [--format text|json|markdown] [--top N]
    sqlperf db upgrade --url URL [--revision REV]
    sqlperf db current --url URL

``--url`` of the ``db`` commands may come from ``SQLPERF_DATABASE_URL`` instead,
which keeps a password out of the process list and the shell history.

Exit codes: 0 on success; 1 when the database fails (cannot connect, refuses a
statement); 2 for a usage error or any :class:`sqlperf.SqlperfError` (a bad URL
or option, a missing optional dependency). Failures print one line, never a
traceback, and never a password.

click is an optional dependency (``pip install 'sqlperf[cli]'``); it is imported
only when the command runs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import sqlalchemy.exc
from sqlalchemy import make_url

from sqlperf.engine import safe_url
from sqlperf.exceptions import MissingDependency, SqlperfError

if TYPE_CHECKING:
    import click

__all__ = ["main", "make_cli"]

URL_ENVVAR = "SQLPERF_DATABASE_URL"
_USERINFO_PASSWORD = re.compile(r"(?<=:)[^:/@\s'\"]+(?=@)")


def _password_of(raw: str) -> str | None:
    """The password in ``raw``, even when the URL is too malformed to parse."""
    try:
        password = make_url(raw).password
    except (sqlalchemy.exc.ArgumentError, ValueError):
        pass
    else:
        return str(password) if password else None
    userinfo = raw[: raw.rfind("@")] if "@" in raw else ""
    candidate = userinfo[userinfo.rfind(":") + 1 :] if ":" in userinfo else ""
    return candidate if candidate and "/" not in candidate else None


def redact(message: str, url: str | None = None) -> str:
    """Hide passwords in ``message``: those of ``url`` and any ``user:password@``.

    Args:
        message: text that may quote a database URL.
        url: the URL the user gave, if known; its password is hidden wherever it
            appears, even when the URL could not be parsed.

    Returns:
        ``message`` with every password replaced by ``***``.
    """
    if url:
        password = _password_of(url)
        if password:
            message = message.replace(password, "***")
    return _USERINFO_PASSWORD.sub("***", safe_url(message))


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def make_cli() -> click.Group:  # noqa: PLR0915 - one closure per command
    """Build the ``sqlperf`` click group (for embedding, or click's ``CliRunner``).

    Returns:
        The ``click.Group`` with the ``demo``, ``report``, ``diff`` and ``db`` commands.

    Raises:
        MissingDependency: click is not installed.

    Example::

        >>> from click.testing import CliRunner
        >>> CliRunner().invoke(make_cli(), ["--help"]).exit_code
        0
    """
    try:
        import click
    except ImportError:
        raise MissingDependency("click", extra="cli", purpose="the sqlperf command") from None

    class UsageFailure(click.ClickException):
        exit_code = 2

    class DatabaseFailure(click.ClickException):
        exit_code = 1

    @contextmanager
    def errors(url: str | None) -> Iterator[None]:
        """Turn sqlperf errors (exit 2) and database errors (exit 1) into one line."""
        try:
            yield
        except SqlperfError as err:
            raise UsageFailure(redact(_one_line(err), url)) from None
        except sqlalchemy.exc.SQLAlchemyError as err:
            where = f" ({redact(url, url)})" if url else ""
            raise DatabaseFailure(f"database error{where}: {redact(_one_line(err), url)}") from None

    def check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            make_url(value)
        except (sqlalchemy.exc.ArgumentError, ValueError):
            raise click.BadParameter(
                f"cannot parse {redact(value, value)!r}: expected "
                "dialect+driver://user:password@host:port/database",
                ctx=ctx,
                param=param,
            ) from None
        return value

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="sqlperf", prog_name="sqlperf")
    def cli() -> None:
        """sqlperf: make SQLAlchemy applications faster and observable."""

    @cli.command()
    @click.option(
        "--url", callback=check_url, help="Database URL (default: a temporary SQLite file)."
    )
    @click.option(
        "--replica-url",
        callback=check_url,
        help="A read replica of --url: reads go there, writes to --url "
        "(on SQLite a read-only engine on the same file stands in by default).",
    )
    @click.option(
        "--redis-url",
        help="Redis for the query-cache part (default: an in-process cache), "
        "e.g. redis://127.0.0.1:6379/0.",
    )
    @click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, writable=True),
        help="SQLite file to use and keep (instead of a temporary one).",
    )
    @click.option(
        "--out",
        "out_dir",
        default="sqlperf-demo-out",
        show_default=True,
        type=click.Path(file_okay=False, writable=True),
        help="Folder for the demo's output: the captured query log (query_log.jsonl), "
        "its HTML report (report.html) and the executed notebooks.",
    )
    @click.option(
        "--notebooks/--no-notebooks",
        default=True,
        show_default=True,
        help="Execute the analysis notebooks on the captured log.",
    )
    @click.option("--orders", default=100_000, show_default=True, type=click.IntRange(min=1))
    @click.option(
        "--seconds",
        default=5.0,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        help="How long the workload runs.",
    )
    @click.option("--threads", default=4, show_default=True, type=click.IntRange(min=1))
    @click.option(
        "--workers",
        default=4,
        show_default=True,
        type=click.IntRange(min=1),
        help="Processes to assume when checking the pool budget.",
    )
    def demo(
        *,
        url: str | None,
        replica_url: str | None,
        redis_url: str | None,
        db_path: str | None,
        out_dir: str,
        orders: int,
        seconds: float,
        threads: int,
        workers: int,
        notebooks: bool,
    ) -> None:
        """Seed a shop database, run every capability on it, and analyse the captured log."""
        from sqlperf.demo import run_demo

        if url and db_path:
            raise click.UsageError("give --url or --db, not both")
        if db_path:
            url = f"sqlite:///{db_path}"
        with errors(url):
            run_demo(
                url,
                replica_url=replica_url,
                redis_url=redis_url,
                orders=orders,
                seconds=seconds,
                threads=threads,
                workers=workers,
                out=sys.stdout,  # looked up now: CliRunner and redirections replace it
                out_dir=out_dir,
                notebooks=notebooks,
            )

    @cli.group()
    def db() -> None:
        """Manage sqlperf's own tables (Alembic migrations shipped with sqlperf)."""

    url_option = click.option(
        "--url",
        required=True,
        envvar=URL_ENVVAR,
        callback=check_url,
        help=f"Database URL (or set {URL_ENVVAR}).",
    )

    @db.command()
    @url_option
    @click.option("--revision", default="head", show_default=True, help="Target revision.")
    def upgrade(url: str, revision: str) -> None:
        """Create or upgrade sqlperf's tables in the database."""
        from sqlperf import migrate

        with errors(url):
            result = migrate.upgrade(url, revision)
        click.echo(f"sqlperf schema at revision {result} in {redact(safe_url(url), url)}")

    @db.command()
    @url_option
    def current(url: str) -> None:
        """Print sqlperf's schema revision in the database ("none" if never upgraded)."""
        from sqlperf import migrate

        with errors(url):
            result = migrate.current(url)
        click.echo(result or "none")

    formats = click.Choice(["text", "json", "markdown", "html"])

    @cli.command()
    @click.argument("log")
    @click.option("--format", "fmt", type=formats, default="text", show_default=True)
    @click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False, writable=True),
        help="Write to this file instead of the terminal (html: default report.html).",
    )
    @click.option("--top", default=10, show_default=True, type=click.IntRange(min=1))
    def report(log: str, fmt: str, output: str | None, top: int) -> None:
        """Summarise a query log: top fingerprints, N+1 suspects, cache, routes, suggestions.

        LOG is a query_log.jsonl or .parquet file, or a database URL with
        sqlperf's tables (sqlperf_query_log and sqlperf_query_stats).
        """
        from sqlperf.analysis import build_report

        url = log if "://" in log else None
        with errors(url):
            built = build_report(log, top=top)
            if fmt == "text" and output is None:
                built.print()
                return
            text = {
                "text": built.to_markdown,
                "json": built.to_json,
                "markdown": built.to_markdown,
                "html": built.to_html,
            }[fmt]()
        _write(text, output or ("report.html" if fmt == "html" else None))

    @cli.command()
    @click.argument("before")
    @click.argument("after")
    @click.option(
        "--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text"
    )
    @click.option("--top", default=20, show_default=True, type=click.IntRange(min=1))
    def diff(before: str, after: str, fmt: str, top: int) -> None:
        """Compare two query logs (before and after a deploy) fingerprint by fingerprint.

        Lists the fingerprints whose total time moved most, new and vanished ones
        included, with calls, total time and p95 in each log.
        """
        from sqlperf.analysis.diff import diff_logs, render_diff

        url = next((x for x in (before, after) if "://" in x), None)
        with errors(url):
            moved = diff_logs(before, after)
        click.echo(render_diff(moved, fmt=fmt, top=top), nl=False)

    def _write(text: str, output: str | None) -> None:
        if output is None:
            click.echo(text, nl=False)
            return
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        click.echo(f"wrote {output}")

    return cli


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the ``sqlperf`` command and exit.

    Args:
        argv: the arguments (without the program name); ``sys.argv[1:]`` by default.

    Raises:
        SystemExit: always, with the command's exit code (2 when click is missing).
    """
    try:
        cli = make_cli()
    except MissingDependency as err:
        sys.stderr.write(f"sqlperf: {err}\n")
        raise SystemExit(2) from None
    cli.main(args=list(argv) if argv is not None else None, prog_name="sqlperf")
    raise SystemExit(0)  # not reached: click's standalone mode exits itself
