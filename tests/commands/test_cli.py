"""The CLI boundary: version, help, exit codes and one-line errors."""

import subprocess
import sys

from typer.testing import CliRunner

from starcli import __version__
from starcli.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"starcli {__version__}"


def test_every_command_has_help_with_an_example():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("fetch", "prepare"):
        assert name in result.stdout
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "starcli " + name in sub.stdout  # the example line


def test_unknown_dataset_is_a_usage_error_with_suggestion(home):
    result = runner.invoke(app, ["fetch", "celbea"])
    assert result.exit_code == 2
    assert "Did you mean celeba?" in result.output
    assert "Traceback" not in result.output


def test_rafd_without_from_explains_access(home):
    result = runner.invoke(app, ["fetch", "rafd"])
    assert result.exit_code == 1
    assert "rafd.socsci.ru.nl" in result.output and "--from" in result.output
    assert "Traceback" not in result.output


def test_debug_env_shows_traceback(home, monkeypatch):
    monkeypatch.setenv("STARCLI_DEBUG", "1")
    result = runner.invoke(app, ["fetch", "rafd"])
    assert result.exit_code != 0
    assert result.exception is not None and type(result.exception).__name__ == "StarcliError"


def test_bad_flag_is_exit_2(home):
    result = runner.invoke(app, ["prepare", "demo-celeba", "--split", "random"])
    assert result.exit_code == 2
    assert "--split" in result.output


def test_help_starts_fast_without_heavy_imports():
    code = ("import sys, starcli.cli; heavy = [m for m in ('torch', 'h5py', 'cv2', "
            "'albumentations', 'pandas') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_root_help_lists_every_command_with_clicks_own_short_help():
    import typer.main

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    out = " ".join(result.stdout.replace("│", " ").split())  # panel borders at line wraps
    group = typer.main.get_command(app)
    import click

    ctx = click.Context(group, info_name="starcli")
    names = group.list_commands(ctx)
    assert names == ["fetch", "prepare", "datasets", "train", "translate", "import", "eval",
                     "demo"]
    for name in names:
        short = group.get_command(ctx, name).get_short_help_str(limit=200)
        assert f"{name} {short.rstrip('.')}" in out, (name, short)


def test_root_help_and_one_command_build_only_what_they_need():
    code = ("import sys, typer.main, click; from starcli.cli import app\n"
            "g = typer.main.get_command(app)\n"
            "try:\n    g.main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('typer.rich_utils', 'rich.markdown', 'pygments', 'torch')"
            " if m in sys.modules), len(g._built))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[] 0"
