"""The analysis notebooks run top to bottom on a real demo log, and stay committed clean."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from sqlperf.analysis import load_log, suggestions
from sqlperf.analysis.notebooks import (
    INJECTED_TAG,
    NOTEBOOKS,
    PARAMETERS_TAG,
    NotebookExecutionError,
    notebook_dir,
    run_notebook,
    run_notebooks,
)
from sqlperf.demo import run_demo
from sqlperf.exceptions import ConfigurationError, MissingDependency, SqlperfError

#: The figures each notebook draws (every plot_* call is the last expression of a cell).
FIGURES = {"overview.ipynb": 5, "diagnosis.ipynb": 4}


def _read(path: Path) -> Any:
    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _code_cells(nb: Any) -> list[Any]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _outputs(nb: Any) -> list[Any]:
    return [out for cell in _code_cells(nb) for out in cell.outputs]


def _text(nb: Any) -> str:
    """Everything the notebook printed or displayed as text."""
    parts = []
    for out in _outputs(nb):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def _tiny_notebook(path: Path, *sources: str) -> Path:
    v4 = nbformat.v4
    cells = [v4.new_code_cell('X = "default"')]  # type: ignore[no-untyped-call]
    cells[0].metadata["tags"] = [PARAMETERS_TAG]
    cells += [v4.new_code_cell(source) for source in sources]  # type: ignore[no-untyped-call]
    nbformat.write(v4.new_notebook(cells=cells), path)  # type: ignore[no-untyped-call]
    return path


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    run_demo(orders=2000, seconds=1.0, threads=2, out=io.StringIO(), out_dir=out, notebooks=False)
    log = out / "query_log.jsonl"
    assert log.is_file()
    return log


@pytest.fixture(scope="module")
def executed(demo_log: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("executed")
    paths = run_notebooks(demo_log, out)
    assert [p.name for p in paths] == list(NOTEBOOKS)
    assert all(p.parent == out and p.is_file() for p in paths)
    return {p.name: _read(p) for p in paths}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_cell_runs_without_errors(executed: dict[str, Any], name: str) -> None:
    nb = executed[name]
    errors = [out for out in _outputs(nb) if out.output_type == "error"]
    assert errors == [], [f"{e.ename}: {e.evalue}" for e in errors]
    counts = [cell.execution_count for cell in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_figures_are_rendered_as_png(executed: dict[str, Any], name: str) -> None:
    images = [out for out in _outputs(executed[name]) if "image/png" in out.get("data", {})]
    assert len(images) >= FIGURES[name]
    assert all(out.output_type == "execute_result" for out in images)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_are_injected_after_the_parameters_cell(
    executed: dict[str, Any], demo_log: Path, name: str
) -> None:
    cells = executed[name].cells
    tagged = [i for i, cell in enumerate(cells) if PARAMETERS_TAG in _tags(cell)]
    injected = [i for i, cell in enumerate(cells) if INJECTED_TAG in _tags(cell)]
    assert len(tagged) == 1
    assert injected == [tagged[0] + 1]
    source = cells[injected[0]].source
    assert f"LOG = {str(demo_log.resolve())!r}" in source
    assert ("BEFORE = None" in source) == (name == "diagnosis.ipynb")


def test_overview_shows_totals_and_plans_note(executed: dict[str, Any], demo_log: Path) -> None:
    text = _text(executed["overview.ipynb"])
    assert f"source: {demo_log.resolve()}" in text
    assert "statements" in text
    assert "ms in the database" in text
    assert "no plans captured (QueryRecorder(explain=True) captures them)" in text


def test_diagnosis_prints_the_suggestions(executed: dict[str, Any], demo_log: Path) -> None:
    text = _text(executed["diagnosis.ipynb"])
    found = suggestions(load_log(demo_log))
    assert "Suggestions:" in text
    assert found, "the demo workload should leave something to suggest"
    for number, suggestion in enumerate(found, 1):
        assert f"{number}. [{suggestion.action}] {suggestion.message}" in text
    assert "no BEFORE: the first half of the log against the second" in text


def test_diagnosis_compares_with_before(demo_log: Path, tmp_path: Path) -> None:
    source = notebook_dir() / "diagnosis.ipynb"
    parameters = {"LOG": str(demo_log.resolve()), "BEFORE": demo_log.resolve()}
    nb = _read(run_notebook(source, tmp_path / "diagnosis.ipynb", parameters))
    assert [out for out in _outputs(nb) if out.output_type == "error"] == []
    assert f"before: {demo_log.resolve()}" in _text(nb)
    last = _code_cells(nb)[-1]
    assert "plot_pareto" in last.source
    assert "image/png" in last.outputs[0].data


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_clean(name: str) -> None:
    nb = _read(notebook_dir() / name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = _code_cells(nb)
    assert _tags(code[0]) == [PARAMETERS_TAG]
    assert 'LOG = "query_log.jsonl"' in code[0].source
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert not any(INJECTED_TAG in _tags(cell) for cell in nb.cells)
    assert nb.cells[0].cell_type == "markdown"


def test_notebook_dir_holds_every_notebook() -> None:
    folder = notebook_dir()
    assert folder == Path(__file__).resolve().parents[1] / "notebooks"
    assert all((folder / name).is_file() for name in NOTEBOOKS)


def test_a_failing_notebook_raises_and_keeps_what_ran(tmp_path: Path) -> None:
    source = _tiny_notebook(
        tmp_path / "failing.ipynb", "print('before', X)", 'raise ValueError("boom")', "print(1)"
    )
    destination = tmp_path / "out" / "failing.ipynb"
    with pytest.raises(NotebookExecutionError, match=r"failing\.ipynb.*ValueError: boom") as info:
        run_notebook(source, destination, {"X": "injected"})
    error = info.value
    assert isinstance(error, SqlperfError)
    assert "\n" not in str(error)
    assert (error.ename, error.evalue, error.destination) == ("ValueError", "boom", destination)
    nb = _read(destination)
    assert error.cell is not None
    assert nb.cells[error.cell].source == 'raise ValueError("boom")'
    assert _tags(nb.cells[1]) == [INJECTED_TAG]
    assert nb.cells[2].outputs[0].text == "before injected\n"
    assert nb.cells[3].outputs[0].output_type == "error"
    assert nb.cells[4].execution_count is None  # never reached
    assert _read(source).cells[1].source == "print('before', X)"  # the source is untouched


def test_a_bad_parameter_name_is_refused(tmp_path: Path) -> None:
    source = _tiny_notebook(tmp_path / "tiny.ipynb", "print(X)")
    with pytest.raises(ConfigurationError, match="not a Python variable name"):
        run_notebook(source, tmp_path / "out.ipynb", {"not valid": 1})


@pytest.mark.parametrize("module", ["nbclient", "ipykernel"])
def test_a_missing_dependency_names_the_extra(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    source = _tiny_notebook(tmp_path / "tiny.ipynb", "print(X)")
    with pytest.raises(MissingDependency, match=r"sqlperf\[notebooks\]") as info:
        run_notebook(source, tmp_path / "out.ipynb", {})
    assert info.value.module == module
