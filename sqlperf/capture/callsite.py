"""The application's call site of a statement: the first frame outside the libraries.

A statement reaches the recorder's listener through many frames of SQLAlchemy
(and of sqlperf, when a cache or a routing session is in the way). The frame a
developer wants is the first one below them: the line of the application that
ran the query, or touched the lazy-loaded attribute.

Whether a code object belongs to a library is decided once per code object and
remembered, so a walk costs a dictionary lookup per frame (by the code object's id).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import CodeType, FrameType

import sqlalchemy

__all__ = ["CallSiteFinder"]

_SQLALCHEMY_DIR = str(Path(sqlalchemy.__file__).resolve().parent) + os.sep
_SQLPERF_DIR = str(Path(__file__).resolve().parent.parent) + os.sep
# Frames that only pass a call through: a query run inside a ``with`` block or a
# ``functools`` wrapper should point at the application's line, not at these.
_PASS_THROUGH = ("contextlib.py", "functools.py", "threading.py")


def _is_library(filename: str) -> bool:
    try:
        path = str(Path(filename).resolve())
    except (OSError, ValueError):
        return False
    if path.startswith(_SQLALCHEMY_DIR):
        return True
    if path.startswith(_SQLPERF_DIR):
        # The demo is sqlperf's own application: its lines are call sites.
        return not Path(path).name.startswith("demo")
    return Path(path).name in _PASS_THROUGH and "site-packages" not in path


def _display(filename: str, cwd: str) -> str:
    try:
        relative = os.path.relpath(filename, cwd)
    except ValueError:  # another drive on Windows
        return filename
    return filename if relative.startswith("..") else relative


class CallSiteFinder:
    """Find the first application frame on the current thread's stack.

    Example::

        >>> finder = CallSiteFinder()
        >>> finder.find().endswith("<module>")
        True
    """

    def __init__(self) -> None:
        # id(code object) -> (the code object, None (library) or the display name of its
        # file). Keyed by id: a code object's own hash is not cached and covers its
        # constants, 0.1-0.6 µs per frame of SQLAlchemy's, about 30 frames per statement.
        # The value keeps the code object alive, so its id is never another's.
        self._files: dict[int, tuple[CodeType, str | None]] = {}
        self._cwd = os.getcwd()
        self._lock = threading.Lock()

    def find(self, skip: int = 1) -> str | None:
        """Return ``"file.py:LINE function"`` of the first application frame, or None.

        Args:
            skip: frames to leave out above the caller of ``find`` (0 includes it).
        """
        frame: FrameType | None = sys._getframe(skip)
        files = self._files
        while frame is not None:
            code = frame.f_code
            known = files.get(id(code))
            if known is not None:
                shown = known[1]
            else:
                shown = (
                    None if _is_library(code.co_filename) else _display(code.co_filename, self._cwd)
                )
                with self._lock:
                    files[id(code)] = (code, shown)
            if shown is not None:
                return f"{shown}:{frame.f_lineno} {code.co_name}"
            frame = frame.f_back
        return None
