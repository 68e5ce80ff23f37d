"""The bulk operations' progress bar: tqdm, in a terminal or a notebook.

``progress=True`` always shows one (and needs tqdm: ``pip install 'sqlperf[progress]'``);
``progress=False`` never does; ``progress=None`` (the default) shows one only when
stderr is a terminal, tqdm is installed and the run is long: the bar appears
after :data:`LONG_RUN` seconds, so a short run prints nothing.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

from sqlperf.exceptions import MissingDependency

__all__ = ["LONG_RUN", "ProgressBar", "progress_bar"]

#: Seconds a run without ``progress=`` must last before its bar appears.
LONG_RUN = 2.0


class ProgressBar(Protocol):
    """The part of a tqdm bar the bulk operations use."""

    def update(self, n: int) -> Any:
        """Count ``n`` more rows."""

    def close(self) -> None:
        """Finish the bar."""


def progress_bar(progress: bool | None, *, total: int, desc: str) -> ProgressBar | None:
    """A bar counting ``total`` rows, or ``None`` when none should be shown (see the module).

    Raises:
        MissingDependency: ``progress=True`` without tqdm installed.
    """
    if progress is False:
        return None
    if progress is None:
        stderr = sys.stderr
        if stderr is None or not stderr.isatty():
            return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise MissingDependency("tqdm", extra="progress", purpose="progress=True") from None
        return None
    options: dict[str, Any] = {"total": total, "desc": desc, "unit": "rows", "unit_scale": True}
    if progress is None:
        options["delay"] = LONG_RUN
    try:
        bar: ProgressBar = tqdm(**options)
    except ImportError:  # tqdm.auto in Jupyter without ipywidgets: the text bar
        from tqdm.std import tqdm as text_tqdm

        bar = text_tqdm(**options)
    return bar
