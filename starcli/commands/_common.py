"""What every command shares: options, the error boundary, rich output on stderr, --json.

Only this package and `starcli/cli.py` import typer and rich.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from starcli.errors import StarcliError
from starcli.progress import PlainProgress

# Human output and progress go to stderr, so stdout carries only --json.
console = Console(stderr=True, highlight=False)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Data root (default: $STARCLI_HOME or ~/.cache/starcli).",
                 show_default=False, file_okay=False),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON summary object on stdout.")
]


def debug_enabled() -> bool:
    return os.environ.get("STARCLI_DEBUG", "") not in ("", "0", "false", "no")


def cli_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn engine exceptions into one 'Error: …' line and an exit code (1, or 2 for usage
    errors). With STARCLI_DEBUG=1 the exception propagates with its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except StarcliError as exc:
            if debug_enabled():
                raise
            fail(str(exc), exc.exit_code)
        except OSError as exc:  # disk full, permissions: name the file, no traceback
            if debug_enabled():
                raise
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            fail(f"{exc.strerror or exc}{where}. Check the path, permissions and free space.", 1)

    return wrapper


def fail(message: str, code: int = 1) -> None:
    """Print one error line (plus the debug hint) and exit with `code`."""
    console.print(f"[bold red]Error:[/] {message}", soft_wrap=True)
    if code == 1:
        console.print("[dim](set STARCLI_DEBUG=1 for a traceback)[/]")
    raise typer.Exit(code)


def usage_error(message: str, param: str | None = None) -> None:
    """A bad flag value found after parsing: exit 2 with the usage-style message."""
    raise typer.BadParameter(message, param_hint=param)


def emit_json(obj: Any) -> None:
    """The one JSON object of --json, on stdout."""
    sys.stdout.write(json.dumps(obj, default=_json_default, indent=None) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def split_csv(value: str | None) -> tuple[str, ...] | None:
    """'a, b,c' → ('a', 'b', 'c'); None stays None."""
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def split_numbers(value: str | None, flag: str, kind: type = int) -> tuple | None:
    """'45,90' → (45, 90) with `kind` int or float; a bad item is a usage error naming
    `flag` (exit 2); None stays None."""
    parts = split_csv(value)
    if parts is None:
        return None
    try:
        return tuple(kind(p) for p in parts)
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise typer.BadParameter(f"expected comma-separated {noun}, got '{value}'",
                                 param_hint=flag) from None


class RichProgress:
    """starcli.progress.Progress on stderr: rich bars on a terminal (transient, log lines
    kept), plain lines elsewhere (a pipe, a CI log, `2> file`, TERM=dumb), where rich's live
    display would print nothing until the end.

    Plain lines come at each task's start and end and at most every STARCLI_PROGRESS_INTERVAL
    seconds in between (default 10; 0 prints on every step), e.g.
    `prepare demo-celeba train: 1,200/4,000 images (30%), 410 images/s, ETA 7s`.
    `out`, `clock` and `interval` are for tests (default: the stderr console, the monotonic
    clock, the environment variable).
    """

    def __init__(self, enabled: bool = True, *, out: Console | None = None,
                 clock: Callable[[], float] | None = None,
                 interval: float | None = None) -> None:
        out = out or console
        self.plain = enabled and (not out.is_terminal or out.is_dumb_terminal)
        if self.plain:
            if interval is None:
                interval = _progress_interval(out)
            self._impl: Any = PlainProgress(_plain_writer(out), interval=interval,
                                            clock=clock or time.monotonic)
        else:
            self._impl = _LiveBars(out, enabled)

    def __enter__(self) -> RichProgress:
        self._impl.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._impl.__exit__(*exc)

    def start_task(self, description: str, total: float | None = None, unit: str = "it"):
        return self._impl.start_task(description, total, unit)

    def stop_task(self, task) -> None:
        self._impl.stop_task(task)

    def log(self, message: str) -> None:
        self._impl.log(message)


DEFAULT_PROGRESS_INTERVAL = 10.0


def _progress_interval(out: Console) -> float:
    """Seconds between plain progress lines from STARCLI_PROGRESS_INTERVAL; a bad value warns
    and keeps the default rather than failing the command over its progress display."""
    raw = os.environ.get("STARCLI_PROGRESS_INTERVAL", "").strip()
    if not raw:
        return DEFAULT_PROGRESS_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value >= 0 and value != float("inf"):
        return value
    out.print(f"Warning: STARCLI_PROGRESS_INTERVAL={raw!r} is not a number of seconds >= 0; "
              f"using {DEFAULT_PROGRESS_INTERVAL:g}", markup=False, highlight=False,
              soft_wrap=True)
    return DEFAULT_PROGRESS_INTERVAL


def _plain_writer(out: Console) -> Callable[[str], None]:
    def write(line: str) -> None:
        # Engine text is plain: a "[name]" in it is not rich markup.
        out.print(line, markup=False, emoji=False, highlight=False, soft_wrap=True)

    return write


class _LiveBars:
    """Rich progress bars on a terminal."""

    def __init__(self, out: Console, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._console = out
        self._columns_bytes = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                               TransferSpeedColumn(), TimeRemainingColumn())
        self._columns_items = (TextColumn("{task.description}"), BarColumn(),
                               MofNCompleteColumn(), TaskProgressColumn(),
                               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                               TimeRemainingColumn())
        self._progress = Progress(TextColumn(""), console=out, transient=True,
                                  disable=not enabled)
        self._started = False

    def __enter__(self) -> _LiveBars:
        self._progress.start()
        self._started = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
        self._started = False

    def start_task(self, description: str, total: float | None = None, unit: str = "it"):
        columns = self._columns_bytes if unit == "bytes" else self._columns_items
        self._progress.columns = columns
        task_id = self._progress.add_task(description, total=total, rate="")
        return _RichTask(self._progress, task_id, unit)

    def stop_task(self, task) -> None:
        self._progress.remove_task(task.task_id)

    def log(self, message: str) -> None:
        if self._started:
            self._progress.console.print(message, soft_wrap=True)
        else:
            self._console.print(message, soft_wrap=True)


class _RichTask:
    def __init__(self, progress, task_id, unit: str) -> None:
        self._progress = progress
        self.task_id = task_id
        self._unit = unit

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self.task_id, n)
        self._refresh_rate()

    def update(self, *, completed=None, total=None, description=None) -> None:
        kwargs = {k: v for k, v in (("completed", completed), ("total", total),
                                    ("description", description)) if v is not None}
        self._progress.update(self.task_id, **kwargs)
        self._refresh_rate()

    def _refresh_rate(self) -> None:
        if self._unit == "bytes":
            return
        task = self._progress.tasks[self._progress.task_ids.index(self.task_id)]
        speed = task.speed
        if speed:
            self._progress.update(self.task_id, rate=f"{speed:,.0f} {self._unit}/s")
