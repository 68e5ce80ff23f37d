"""The capture writer's thread: idle back-off, delivery without flush, prompt close."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlperf.capture.writer import Writer


class ListSink:
    """Keeps every batch it is given."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.closed = False

    def write(self, items: Sequence[Any]) -> None:
        self.items.extend(items)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _writer(sink: ListSink, **kwargs: Any) -> Writer:
    windows = kwargs.pop("windows", None)
    return Writer(
        [sink],
        build=lambda item: item,
        window=windows or (lambda: []),
        capacity=100,
        **kwargs,
    )


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_an_idle_writer_still_delivers_without_flush() -> None:
    sink = ListSink()
    writer = _writer(sink, stats_interval_s=None, poll_s=0.01, idle_s=0.2)
    writer.start()
    try:
        time.sleep(0.5)  # long enough to back off to idle_s
        writer.put("first")
        assert _wait_for(lambda: sink.items == ["first"])
        writer.put("second")
        assert _wait_for(lambda: sink.items == ["first", "second"])
    finally:
        writer.close()
    assert sink.closed


def test_close_does_not_wait_out_a_long_idle_sleep() -> None:
    sink = ListSink()
    writer = _writer(sink, stats_interval_s=None, poll_s=60.0, idle_s=60.0)
    before = set(threading.enumerate())
    writer.start()
    (thread,) = set(threading.enumerate()) - before
    time.sleep(0.3)  # in its first 60 s sleep
    writer.put("queued")
    writer.close(timeout=10.0)
    assert not thread.is_alive()  # asleep for 60 s, it would outlive the 10 s join
    assert sink.items == ["queued"]  # close() drained it on its own thread
    assert sink.closed


def test_statistics_windows_keep_their_interval_while_idle() -> None:
    sink = ListSink()
    calls: list[float] = []

    def window() -> list[Any]:
        calls.append(time.monotonic())
        return []

    writer = _writer(sink, windows=window, stats_interval_s=0.1, poll_s=30.0, idle_s=30.0)
    writer.start()
    try:
        # With a 30 s idle sleep and no cap at the next window, one window would take 30 s.
        assert _wait_for(lambda: len(calls) >= 3)
    finally:
        writer.close()
