"""The `starcli` command: registers the commands, nothing else.

Command modules import only typer/rich at module level; torch, h5py and friends are imported
inside the engine functions they call, so `starcli --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from starcli import __version__

app = typer.Typer(
    name="starcli",
    help="StarGAN-style multi-domain face translation: fetch, prepare, train, translate, eval.\n\n"
         "Example: starcli demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)

# (module in starcli.commands, attribute, kind): "command" registers a function,
# "group" adds a Typer sub-app.
_COMMANDS = (
    ("fetch", "fetch", "command"),
    ("prepare", "prepare", "command"),
    ("datasets", "app", "group"),
    ("train", "train", "command"),
    ("translate", "translate", "command"),
    ("import_", "app", "group"),
    ("eval", "app", "group"),
    ("demo", "demo", "command"),
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"starcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """StarGAN-style multi-domain face translation: fetch, prepare, train, translate, eval."""


def _register() -> None:
    for module_name, attr, kind in _COMMANDS:
        module = importlib.import_module(f"starcli.commands.{module_name}")
        obj = getattr(module, attr)
        name = getattr(module, "COMMAND_NAME", module_name)
        if kind == "group":
            app.add_typer(obj, name=name)
        else:
            app.command(name=name)(obj)


_register()


def main() -> None:
    app()
