"""Progress on stderr when it is not a terminal (scripts, CI logs, `2> file`): plain lines at a
steady interval instead of rich's live bars, which print nothing there until the end."""

from __future__ import annotations

import io
import json

from rich.console import Console
from typer.testing import CliRunner

from starcli.cli import app
from starcli.commands._common import RichProgress
from starcli.progress import log, progress_task


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pipe() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=60), buf


def _lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def test_plain_lines_at_start_at_each_interval_and_at_end():
    out, buf = _pipe()
    clock = FakeClock()
    with RichProgress(out=out, clock=clock, interval=10) as progress, \
            progress_task(progress, "prepare demo-celeba", total=4000, unit="images") as task:
        assert _lines(buf) == ["prepare demo-celeba: 0/4,000 images (0%)"]
        clock.now += 4
        task.advance(500)
        assert len(_lines(buf)) == 1  # inside the interval: no line
        clock.now += 6
        task.advance(700)
        assert _lines(buf)[-1] == ("prepare demo-celeba: 1,200/4,000 images (30%), "
                                   "120 images/s, ETA 23s")
        clock.now += 5
        task.advance(2800)
        assert len(_lines(buf)) == 2
    # the end line carries the average rate over the whole task
    assert _lines(buf)[-1] == ("prepare demo-celeba: 4,000/4,000 images (100%), "
                               "267 images/s, took 15s")
    assert len(_lines(buf)) == 3


def test_bytes_are_shown_as_mb_and_gb_and_a_resume_offset_is_not_speed():
    out, buf = _pipe()
    clock = FakeClock()
    size = 1_443_490_838
    with RichProgress(out=out, clock=clock, interval=10) as progress, \
            progress_task(progress, "download img_align_celeba.zip", total=size,
                          unit="bytes") as task:
        task.update(completed=500_000_000)  # a resumed .part file: already on disk
        clock.now += 10
        task.advance(120_000_000)
        line = _lines(buf)[-1]
    assert line == ("download img_align_celeba.zip: 620.0 MB/1.44 GB (42%), 12.0 MB/s, "
                    "ETA 1m09s")


def test_unknown_total_shows_count_and_rate_only():
    out, buf = _pipe()
    clock = FakeClock()
    with RichProgress(out=out, clock=clock, interval=10) as progress, \
            progress_task(progress, "download x.bin", unit="bytes") as task:
        clock.now += 10
        task.advance(5_000_000)
    assert _lines(buf)[1] == "download x.bin: 5.0 MB, 500.0 kB/s"


def test_log_messages_still_print_between_progress_lines():
    out, buf = _pipe()
    clock = FakeClock()
    with RichProgress(out=out, clock=clock, interval=0) as progress, \
            progress_task(progress, "translate", total=2, unit="images") as task:
        log(progress, "note: [brackets] stay literal")
        clock.now += 1
        task.advance()
    lines = _lines(buf)
    assert lines[1] == "note: [brackets] stay literal"
    assert lines[2].startswith("translate: 1/2 images (50%), 1.0 images/s")


def test_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("STARCLI_PROGRESS_INTERVAL", "0")
    out, buf = _pipe()
    clock = FakeClock()
    with RichProgress(out=out, clock=clock) as progress, \
            progress_task(progress, "eval demo", total=3, unit="images") as task:
        for _ in range(3):
            clock.now += 1
            task.advance()
    counts = [line.split(": ")[1].split(" ")[0] for line in _lines(buf)]
    assert counts == ["0/3", "1/3", "2/3", "3/3", "3/3"]  # start, every advance, end


def test_a_bad_interval_warns_and_uses_the_default(monkeypatch):
    monkeypatch.setenv("STARCLI_PROGRESS_INTERVAL", "soon")
    out, buf = _pipe()
    clock = FakeClock()
    with RichProgress(out=out, clock=clock) as progress, \
            progress_task(progress, "eval demo", total=3, unit="images") as task:
        clock.now += 9
        task.advance()
    lines = _lines(buf)
    assert "STARCLI_PROGRESS_INTERVAL" in lines[0] and "10" in lines[0]
    assert len([line for line in lines if line.startswith("eval demo: 1/3")]) == 1  # the end only


def test_default_console_chooses_plain_lines_when_stderr_is_a_pipe(capsys):
    clock = FakeClock()
    with RichProgress(clock=clock, interval=0) as progress, \
            progress_task(progress, "render demo-celeba", total=2, unit="images") as task:
        clock.now += 1
        task.advance(2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "render demo-celeba: 2/2 images (100%), 2.0 images/s" in captured.err


def test_a_terminal_gets_live_bars_not_plain_lines():
    buf = io.StringIO()
    out = Console(file=buf, force_terminal=True, width=100)
    clock = FakeClock()
    with RichProgress(out=out, clock=clock, interval=0) as progress, \
            progress_task(progress, "prepare demo-celeba", total=4, unit="images") as task:
        clock.now += 1
        task.advance(2)
        progress.log("a log line")
    text = buf.getvalue()
    assert "a log line" in text
    assert "images (" not in text and "prepare demo-celeba:" not in text


def test_fetch_prints_plain_progress_on_stderr_and_json_alone_on_stdout(home, monkeypatch):
    monkeypatch.setenv("STARCLI_PROGRESS_INTERVAL", "0")
    result = CliRunner().invoke(app, ["fetch", "demo-celeba", "--count", "6", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 6
    assert len(result.stdout.strip().splitlines()) == 1
    err = result.stderr.splitlines()
    assert "render demo-celeba: 0/6 images (0%)" in err
    assert any(line.startswith("render demo-celeba: 6/6 images (100%)") and "took" in line
               for line in err)
