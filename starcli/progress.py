"""Progress reporting from the engine without importing a UI library.

Engine functions accept ``progress: Progress | None``. The CLI passes an implementation that
draws rich progress bars on stderr (or `PlainProgress` lines when stderr is not a terminal);
Python callers can pass their own, a `PlainProgress`, or nothing.

    with progress_task(progress, "download img_align_celeba.zip", total=n, unit="bytes") as t:
        t.advance(len(chunk))
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol


class Task(Protocol):
    def advance(self, n: float = 1) -> None: ...

    def update(self, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None: ...


class Progress(Protocol):
    def start_task(self, description: str, total: float | None = None,
                   unit: str = "it") -> Task: ...

    def stop_task(self, task: Task) -> None: ...

    def log(self, message: str) -> None: ...


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, *, completed=None, total=None, description=None) -> None:
        pass


@contextlib.contextmanager
def progress_task(progress: Progress | None, description: str, total: float | None = None,
                  unit: str = "it") -> Iterator[Task]:
    """A task on `progress`, or a no-op task when `progress` is None. `unit` is "it",
    "images" or "bytes" (bytes get size, speed and ETA columns in the CLI)."""
    if progress is None:
        yield _NullTask()
        return
    task = progress.start_task(description, total, unit)
    try:
        yield task
    finally:
        progress.stop_task(task)


def log(progress: Progress | None, message: str) -> None:
    """A human-readable line for the user (stderr in the CLI), dropped when progress is None."""
    if progress is not None:
        progress.log(message)


class PlainProgress:
    """Progress as plain text lines, for logs, pipes and CI where live bars cannot redraw.

    Each task prints a line when it starts, then at most one line every `interval` seconds
    while it moves, and one when it stops (with its average rate and duration):

        prepare demo-celeba train: 1,200/4,000 images (30%), 410 images/s, ETA 7s

    The rate in a line is measured since the task's previous line. Lines are written only
    from advance()/update(), so a stalled task is silent until it moves (the engine logs its
    own retries). Unit "bytes" is shown as kB/MB/GB. `write` gets one line without newline
    (default: stderr); `clock` is injectable for tests.
    """

    def __init__(self, write: Callable[[str], None] | None = None, *, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write or _write_stderr
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()  # engines may advance from worker threads

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start_task(self, description: str, total: float | None = None,
                   unit: str = "it") -> _PlainTask:
        task = _PlainTask(self, description, total, unit)
        self.emit(task.line())
        return task

    def stop_task(self, task) -> None:
        self.emit(task.final_line(self.clock()))

    def log(self, message: str) -> None:
        self.emit(message)

    def emit(self, line: str) -> None:
        with self._lock:
            self._write(line)


def _write_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class _PlainTask:
    def __init__(self, owner: PlainProgress, description: str, total: float | None,
                 unit: str) -> None:
        self._owner = owner
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = 0.0
        now = owner.clock()
        self._begin = (now, 0.0)  # (time, completed) the average rate counts from
        self._mark = (now, 0.0)  # the same at the previous line: the current rate
        self._moved = False

    def advance(self, n: float = 1) -> None:
        self.completed += n
        self._moved = True
        self._maybe_line()

    def update(self, *, completed=None, total=None, description=None) -> None:
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        if completed is not None:
            if not self._moved or completed < self.completed:
                # A resumed start (download offset, training step) or a restart from zero is
                # not work done now, so rates count from here.
                now = self._owner.clock()
                self._begin = self._mark = (now, completed)
            self.completed = completed
            self._moved = True
        self._maybe_line()

    def _maybe_line(self) -> None:
        now = self._owner.clock()
        if now - self._mark[0] < self._owner.interval:
            return
        rate = _rate(self._mark, now, self.completed)
        self._mark = (now, self.completed)
        self._owner.emit(self.line(rate))

    def line(self, rate: float | None = None) -> str:
        parts = [self._amount()]
        if rate is not None:
            parts.append(self._speed(rate))
            if rate > 0 and self.total and self.completed < self.total:
                parts.append(f"ETA {format_duration((self.total - self.completed) / rate)}")
        return f"{self.description}: " + ", ".join(parts)

    def final_line(self, now: float) -> str:
        parts = [self._amount()]
        rate = _rate(self._begin, now, self.completed)
        if rate is not None:
            parts.append(self._speed(rate))
        parts.append(f"took {format_duration(now - self._begin[0])}")
        return f"{self.description}: " + ", ".join(parts)

    def _amount(self) -> str:
        fmt = format_bytes if self.unit == "bytes" else _format_count
        text = fmt(self.completed)
        if not self.total:
            return text if self.unit == "bytes" else f"{text} {self.unit}"
        percent = int(100 * self.completed / self.total)  # floor: 100% only when done
        if self.unit == "bytes":
            return f"{text}/{fmt(self.total)} ({percent}%)"
        return f"{text}/{fmt(self.total)} {self.unit} ({percent}%)"

    def _speed(self, rate: float) -> str:
        if self.unit == "bytes":
            return f"{format_bytes(rate)}/s"
        return f"{rate:,.0f} {self.unit}/s" if rate >= 10 else f"{rate:.1f} {self.unit}/s"


def _rate(since: tuple[float, float], now: float, completed: float) -> float | None:
    elapsed = now - since[0]
    return max(completed - since[1], 0.0) / elapsed if elapsed > 0 else None


def _format_count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def format_bytes(n: float) -> str:
    """1_443_490_838 → '1.44 GB' (decimal units, as download sizes are quoted)."""
    if n < 1e3:
        return f"{n:.0f} B"
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    if n < 1e9:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e9:.2f} GB"


def format_duration(seconds: float) -> str:
    """7 → '7s', 69 → '1m09s', 3720 → '1h02m'."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
