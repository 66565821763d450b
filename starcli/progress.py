"""Progress reporting from the engine without importing a UI library.

Engine functions accept ``progress: Progress | None``. The CLI passes an implementation that
draws rich progress bars on stderr; Python callers can pass their own or nothing.

    with progress_task(progress, "download img_align_celeba.zip", total=n, unit="bytes") as t:
        t.advance(len(chunk))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
