"""The application's call site of a statement: the first frame outside the libraries.

A statement reaches the recorder's listener through many frames of SQLAlchemy
(and of sqlperf, when a cache or a routing session is in the way). The frame a
developer wants is the first one below them: the line of the application that
ran the query, or touched the lazy-loaded attribute.

Whether a file belongs to a library is decided once per file name and remembered,
so a library frame costs a set lookup.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import FrameType

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
        # Decided once per file name: the library's files, and how the application's
        # are shown. A file name's hash is cached in the string, so a library frame
        # costs one set lookup; a code object's hash is not, and covers its constants.
        self._library: set[str] = set()
        self._shown: dict[str, str] = {}
        self._cwd = os.getcwd()

    def find(self, skip: int = 1) -> str | None:
        """Return ``"file.py:LINE function"`` of the first application frame, or None.

        Args:
            skip: frames to leave out above the caller of ``find`` (0 includes it).
        """
        frame: FrameType | None = sys._getframe(skip)
        library = self._library
        while frame is not None:
            code = frame.f_code
            filename = code.co_filename
            if filename not in library:
                shown = self._shown.get(filename) or self._classify(filename)
                if shown is not None:
                    return f"{shown}:{frame.f_lineno} {code.co_name}"
            frame = frame.f_back
        return None

    def _classify(self, filename: str) -> str | None:
        # Both containers only grow, and each write is one atomic operation: a
        # thread that decides the same file at the same time writes the same thing.
        if _is_library(filename):
            self._library.add(filename)
            return None
        shown = self._shown[filename] = _display(filename, self._cwd)
        return shown
