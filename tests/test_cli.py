"""The ``sqlperf`` command: demo, db upgrade/current, and its error reporting."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import nbformat
import pytest
from click.testing import CliRunner

import sqlperf
from sqlperf.cli import main, make_cli, redact

SECRET = "s3cretPW"


@pytest.fixture
def cli() -> click.Group:
    return make_cli()


def _expected_from_log(path: Path) -> tuple[str, str]:
    """The top fingerprint by total time and the N+1 call site, read from the raw JSON lines."""
    totals: dict[str, float] = {}
    shapes: dict[str, str] = {}
    sites: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item["type"] == "stats":
            totals[item["fingerprint_id"]] = totals.get(item["fingerprint_id"], 0.0) + float(
                item["total_ms"]
            )
            shapes[item["fingerprint_id"]] = item["fingerprint"]
        elif item["kind"] == "n_plus_one":
            sites[item["call_site"]] = sites.get(item["call_site"], 0.0) + item["duration_ms"]
    top = max(totals, key=lambda k: totals[k])
    return shapes[top], max(sites, key=lambda k: sites[k])


def test_demo_writes_its_log_report_and_notebooks(cli: click.Group, tmp_path: Path) -> None:
    """The end-to-end run of `make demo`, small: log, HTML report, notebooks, then `report`."""
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        ["demo", "--orders", "500", "--seconds", "0.5", "--threads", "2", "--out", str(out)],
    )

    assert result.exit_code == 0, result.output
    for name in ("customer_orders", "order_by_id", "top_products", "place_order"):
        assert name in result.stdout
    assert "seeded" in result.stdout
    assert "temporary database removed" in result.stdout
    assert "top fingerprints by total time" in result.stdout
    log = out / "query_log.jsonl"
    top, site = _expected_from_log(log)
    assert "demo_nplusone.py" in site
    assert f"N+1 suspect: {site}" in result.stdout
    page = (out / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 4
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    for name in ("overview.ipynb", "diagnosis.ipynb"):
        executed = nbformat.read(out / name, as_version=4)  # type: ignore[no-untyped-call]
        outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], name
        assert any("image/png" in o.get("data", {}) for o in outputs), name

    shown = CliRunner().invoke(cli, ["report", str(log), "--format", "markdown"])

    assert shown.exit_code == 0, shown.output
    top_section = shown.stdout.split("## Top fingerprints by total time")[1]
    first_row = top_section.strip().splitlines()[2]
    assert top.replace("|", "\\|") in first_row
    assert site in shown.stdout.split("## N+1 suspects")[1]
    in_terminal = CliRunner().invoke(cli, ["report", str(log)], terminal_width=250)
    assert in_terminal.exit_code == 0, in_terminal.output
    assert site in in_terminal.stdout
    assert top[:40] in in_terminal.stdout


def test_demo_keeps_the_file_given_with_db(cli: click.Group, tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    args = ["demo", "--db", str(path), "--orders", "100", "--seconds", "0.2", "--threads", "1"]
    args.append("--no-notebooks")
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "out")])

    assert result.exit_code == 0, result.output
    assert path.exists()
    assert "demo_* tables kept" in result.stdout


def test_demo_refuses_url_and_db_together(cli: click.Group, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--url", "sqlite://", "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 2
    assert "not both" in result.output


def test_demo_rejects_a_non_positive_size(cli: click.Group) -> None:
    result = CliRunner().invoke(cli, ["demo", "--orders", "0"])
    assert result.exit_code == 2
    assert "--orders" in result.output


def test_db_upgrade_then_current(cli: click.Group, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    runner = CliRunner()

    before = runner.invoke(cli, ["db", "current", "--url", url])
    assert before.exit_code == 0, before.output
    assert before.stdout.strip() == "none"

    upgraded = runner.invoke(cli, ["db", "upgrade", "--url", url])
    assert upgraded.exit_code == 0, upgraded.output
    assert "revision 0002" in upgraded.stdout

    after = runner.invoke(cli, ["db", "current", "--url", url])
    assert after.exit_code == 0, after.output
    assert after.stdout.strip() == "0002"


def test_db_url_from_the_environment(cli: click.Group, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    runner = CliRunner(env={"SQLPERF_DATABASE_URL": url})

    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(cli, ["db", "current"])
    assert result.stdout.strip() == "0002"


def test_db_upgrade_to_unknown_revision_exits_2(cli: click.Group, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = CliRunner().invoke(cli, ["db", "upgrade", "--url", url, "--revision", "9999"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: cannot upgrade sqlperf's schema: Can't locate revision identified by '9999'"
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Not a URL at all (the "://" is missing): refused while parsing the options.
        (f"postgresql+psycopg2:/app:{SECRET}@127.0.0.1/test", "cannot parse"),
        # A port that is not a number.
        (f"postgresql+psycopg2://app:{SECRET}@127.0.0.1:port/test", "cannot parse"),
        # A database sqlperf does not know: sqlperf.UnsupportedDatabase.
        (f"nosuchdb://app:{SECRET}@127.0.0.1/test", "no dialect for 'nosuchdb'"),
    ],
)
@pytest.mark.parametrize("command", ["upgrade", "current"])
def test_bad_url_exits_2_without_password_or_traceback(
    cli: click.Group, url: str, expected: str, command: str
) -> None:
    result = CliRunner().invoke(cli, ["db", command, "--url", url])

    assert result.exit_code == 2
    assert expected in result.stderr
    assert "app:***@" in result.stderr
    assert SECRET not in result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_sqlperf_error_is_one_line(cli: click.Group) -> None:
    result = CliRunner().invoke(cli, ["db", "upgrade", "--url", f"nosuchdb://app:{SECRET}@h/db"])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: SQLAlchemy has no dialect for 'nosuchdb'")


def test_unreachable_database_exits_1_with_one_line(cli: click.Group) -> None:
    # Port 1 on loopback: the connection is refused at once.
    url = f"postgresql+psycopg2://app:{SECRET}@127.0.0.1:1/test"
    result = CliRunner().invoke(cli, ["db", "upgrade", "--url", url])

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: database error (postgresql+psycopg2://app:***@127.0.0.1:1/test)")
    assert "Connection refused" in line
    assert SECRET not in result.output


def test_wrong_password_on_a_real_server_is_not_echoed(cli: click.Group, postgres_url: str) -> None:
    from sqlalchemy import make_url

    url = make_url(postgres_url).set(username="sqlperf_no_such_role", password=SECRET)
    result = CliRunner().invoke(
        cli, ["db", "current", "--url", url.render_as_string(hide_password=False)]
    )

    assert result.exit_code == 1
    assert "sqlperf_no_such_role" in result.stderr
    assert SECRET not in result.output


def test_redact_hides_passwords_of_unparsable_urls() -> None:
    url = f"mysql+pymysql:/root:{SECRET}@db/app"
    assert SECRET not in redact(f"could not parse {url!r}", url)
    assert SECRET not in redact(f"see postgresql://u:{SECRET}@h/db")
    assert redact("sqlite:////tmp/app.db", "sqlite:////tmp/app.db") == "sqlite:////tmp/app.db"


def test_main_without_click_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "click", None)  # makes `import click` raise ImportError

    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "sqlperf: click is not installed (needed for the sqlperf command): "
        "pip install 'sqlperf[cli]'"
    )


def test_python_dash_m_sqlperf() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sqlperf", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sqlperf.__version__ in done.stdout
