"""Run the analysis notebooks headless on a query log.

The source tree's ``notebooks/`` folder holds two notebooks, :data:`NOTEBOOKS`:
``overview.ipynb`` (where the database time went) and ``diagnosis.ipynb`` (what
to fix). Each reads its log from a ``LOG`` variable in a cell tagged
``parameters``, the papermill convention; :func:`run_notebook` injects the values
in a cell tagged ``injected-parameters`` right after it, executes every cell
with nbclient and writes the executed notebook, outputs and plots included.

The kernel is ipykernel in *this* interpreter, whatever ``python3`` kernelspec
is installed elsewhere, so the notebooks import the same sqlperf as the caller.
Running needs ``pip install 'sqlperf[notebooks]'`` (nbclient, nbformat,
ipykernel, matplotlib, pandas).

Example::

    from pathlib import Path
    from sqlperf.analysis.notebooks import run_notebooks

    for path in run_notebooks("out/query_log.jsonl", Path("out")):
        print("executed", path)
"""

from __future__ import annotations

import functools
import importlib.util
import keyword
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlperf.exceptions import ConfigurationError, MissingDependency, SqlperfError

if TYPE_CHECKING:
    from jupyter_client.manager import AsyncKernelManager
    from nbformat import NotebookNode

__all__ = [
    "INJECTED_TAG",
    "NOTEBOOKS",
    "PARAMETERS_TAG",
    "NotebookExecutionError",
    "notebook_dir",
    "run_notebook",
    "run_notebooks",
]

#: The analysis notebooks in :func:`notebook_dir`, in the order :func:`run_notebooks` runs them.
NOTEBOOKS: tuple[str, ...] = ("overview.ipynb", "diagnosis.ipynb")

#: The tag of the cell whose assignments are the notebook's parameters (papermill's).
PARAMETERS_TAG = "parameters"

#: The tag of the cell :func:`run_notebook` adds with the values passed (papermill's).
INJECTED_TAG = "injected-parameters"

_KERNEL = "python3"
_PURPOSE = "running the analysis notebooks"


class NotebookExecutionError(SqlperfError, RuntimeError):
    """A notebook failed while it ran: a cell raised, timed out, or the kernel died.

    The executed part of the notebook, the failing cell's traceback included, was
    written to :attr:`destination` before this was raised.

    Attributes:
        notebook: the notebook that was run.
        destination: where the partly executed notebook was written.
        cell: the index of the failing cell in the executed notebook's ``cells``
            (from 0, markdown and injected cells included), or ``None`` when no
            cell ran (the kernel did not start).
        ename: the error's class name (``"ValueError"``), as the kernel reported it.
        evalue: the error's message.
    """

    def __init__(
        self,
        notebook: Path,
        destination: Path,
        *,
        cell: int | None,
        ename: str,
        evalue: str,
    ) -> None:
        self.notebook = notebook
        self.destination = destination
        self.cell = cell
        self.ename = ename
        self.evalue = evalue
        where = f"in cell {cell}" if cell is not None else "before any cell ran"
        detail = f"{ename}: {evalue}" if evalue else ename
        super().__init__(
            f"notebook {notebook.name} failed {where}: {_one_line(detail)} "
            f"(what ran is in {destination})"
        )


def notebook_dir() -> Path:
    """The source tree's ``notebooks/`` folder, found relative to the sqlperf package.

    Raises:
        ConfigurationError: there is no such folder, as when sqlperf was installed
            from a wheel: the notebooks ship with the source tree only.
    """
    folder = Path(__file__).resolve().parents[2] / "notebooks"
    if not folder.is_dir():
        raise ConfigurationError(
            f"the analysis notebooks are not at {folder}: they ship with sqlperf's source "
            "tree, not its wheel; run from a checkout (pip install -e '.[notebooks]')"
        )
    return folder


def run_notebook(
    source: Path,
    destination: Path,
    parameters: Mapping[str, Any],
    *,
    timeout: float = 600,
    cwd: Path | None = None,
) -> Path:
    """Execute one notebook top to bottom with ``parameters`` and write the result.

    Args:
        source: the notebook to run (it is not modified).
        destination: where to write the executed notebook (folders are created);
            may be ``source`` itself.
        parameters: variable name -> value, assigned with ``repr`` in a new cell
            tagged ``injected-parameters``, right after the cell tagged
            ``parameters`` (at the top when there is none; an injected cell of an
            earlier run is replaced). Path values are passed as strings.
        timeout: seconds a single cell may run.
        cwd: the kernel's working directory, for relative paths in the notebook;
            ``destination``'s folder by default.

    Returns:
        ``destination``.

    Raises:
        NotebookExecutionError: a cell raised or timed out, or the kernel died; the
            executed part is written to ``destination`` first.
        ConfigurationError: a parameter name is not a Python identifier, or
            ``source`` cannot be read.
        MissingDependency: nbclient, nbformat or ipykernel is not installed.
    """
    _require_kernel()
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    except ImportError as exc:
        raise MissingDependency(
            exc.name or "nbclient", extra="notebooks", purpose=_PURPOSE
        ) from None

    try:
        nb = nbformat.read(source, as_version=4)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read notebook {source}: {_one_line(str(exc))}") from exc
    _inject(nb, parameters)
    destination.parent.mkdir(parents=True, exist_ok=True)
    started: list[int] = []  # the cells sent to the kernel, for the error's cell index

    def on_cell_execute(cell_index: int, **_: Any) -> None:
        started.append(cell_index)

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=_KERNEL,
        kernel_manager_class=_kernel_manager_class(),
        resources={"metadata": {"path": str(cwd or destination.parent)}},
        on_cell_execute=on_cell_execute,
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        failure: tuple[str, str] = (exc.ename, exc.evalue)
    except CellTimeoutError:
        failure = ("CellTimeoutError", f"a cell ran longer than timeout={timeout:g} s")
    except (DeadKernelError, RuntimeError, TimeoutError) as exc:  # the kernel died or is mute
        failure = (type(exc).__name__, str(exc))
    else:
        nbformat.write(nb, destination)  # type: ignore[no-untyped-call]
        return destination
    nbformat.write(nb, destination)  # type: ignore[no-untyped-call]
    raise NotebookExecutionError(
        source,
        destination,
        cell=started[-1] if started else None,
        ename=failure[0],
        evalue=failure[1],
    )


def run_notebooks(
    log: str | Path,
    out_dir: Path,
    *,
    before: str | Path | None = None,
    timeout: float = 600,
) -> list[Path]:
    """Run every notebook of :data:`NOTEBOOKS` on ``log`` into ``out_dir``.

    Args:
        log: the query log: a ``.jsonl`` or ``.parquet`` path (relative ones are
            made absolute, since the kernels run in ``out_dir``) or a database URL.
        out_dir: where the executed notebooks go, under their own names (created
            if needed); the kernels run there.
        before: an earlier log for the diagnosis notebook's comparison; ``None``
            compares the first half of ``log`` with its second half.
        timeout: seconds a single cell may run.

    Returns:
        The executed notebooks, in the order of :data:`NOTEBOOKS`.

    Raises:
        NotebookExecutionError: a notebook failed (what ran of it is written).
        ConfigurationError: the notebooks folder is missing (see :func:`notebook_dir`).
        MissingDependency: an optional dependency of the notebooks is missing.
    """
    for module in ("pandas", "matplotlib"):
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(module, extra="notebooks", purpose=_PURPOSE)
    folder = notebook_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, dict[str, Any]] = {
        "overview.ipynb": {"LOG": _log_argument(log)},
        "diagnosis.ipynb": {
            "LOG": _log_argument(log),
            "BEFORE": None if before is None else _log_argument(before),
        },
    }
    return [
        run_notebook(folder / name, out_dir / name, values[name], timeout=timeout, cwd=out_dir)
        for name in NOTEBOOKS
    ]


def _require_kernel() -> None:
    """The kernel runs ``python -m ipykernel_launcher`` in this interpreter: is it there?"""
    if importlib.util.find_spec("ipykernel") is None:
        raise MissingDependency("ipykernel", extra="notebooks", purpose=_PURPOSE)


@functools.cache
def _kernel_manager_class() -> type[AsyncKernelManager]:
    """A kernel manager whose ``python3`` is ipykernel's own spec for ``sys.executable``.

    Installed kernelspecs are ignored: a ``python3`` kernelspec in the user's
    Jupyter folder may name another interpreter, without sqlperf. Where
    jupyter_client and libzmq can (CurveZMQ), the kernel's sockets are encrypted.
    """
    import zmq
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class CurrentInterpreterKernelManager(AsyncKernelManager):
        """Start ``python3`` kernels with the interpreter running sqlperf."""

        @default("kernel_spec_manager")
        def _current_interpreter_specs(self) -> KernelSpecManager:
            # No kernel folders: only ipykernel's native spec, argv[0] = sys.executable.
            return KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)

        @default("transport_encryption")  # jupyter_client 8.10+; ignored before
        def _encrypt_when_possible(self) -> str:
            # "auto": CurveZMQ keys for kernels whose spec supports them (ipykernel 7.4+).
            return "auto" if zmq.has("curve") else "disabled"

    return CurrentInterpreterKernelManager


def _inject(nb: NotebookNode, parameters: Mapping[str, Any]) -> None:
    """Put a cell assigning ``parameters`` after the ``parameters`` cell (papermill-style)."""
    from nbformat.v4 import new_code_cell

    lines = ["# Parameters"]
    for name, value in parameters.items():
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigurationError(f"notebook parameter {name!r} is not a Python variable name")
        plain = os.fspath(value) if isinstance(value, os.PathLike) else value
        lines.append(f"{name} = {plain!r}")
    cell = new_code_cell("\n".join(lines) + "\n")  # type: ignore[no-untyped-call]
    cell.metadata["tags"] = [INJECTED_TAG]
    cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    tagged = [
        i for i, c in enumerate(cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])
    ]
    cells.insert(tagged[0] + 1 if tagged else 0, cell)
    nb.cells = cells


def _log_argument(log: str | Path) -> str:
    """A URL as it is; a path made absolute (the kernel runs elsewhere)."""
    text = os.fspath(log)
    if "://" in text:
        return text
    return str(Path(text).resolve())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(text: str) -> str:
    """An error message on one line, without terminal colours."""
    return " ".join(_ANSI.sub("", text).split())
