"""The `starcli` command: registers the commands, nothing else.

Command modules import only typer/rich at module level; torch, h5py and friends are imported
inside the engine functions they call, so `starcli --help` stays fast. The root help is drawn
here with rich's console and table: typer's own help renderer (typer.rich_utils) imports
rich.markdown, rich.syntax, rich.traceback and pygments, about 0.3 s, to show eight lines.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from starcli import __version__

# (module in starcli.commands, attribute, kind): "command" is a function, "group" a Typer
# sub-app. The module's COMMAND_NAME, when it has one, is the name on the command line.
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


def _load(module_name: str, attr: str) -> tuple[str, Any]:
    module = importlib.import_module(f"starcli.commands.{module_name}")
    return getattr(module, "COMMAND_NAME", module_name), getattr(module, attr)


def _short_help(obj: Any, kind: str) -> str:
    """The first sentence of a command's help, as click shortens it, without building it."""
    if kind == "group":
        callback = obj.registered_callback
        doc = obj.info.help if isinstance(obj.info.help, str) else None
        doc = doc or (inspect.getdoc(callback.callback) if callback else "") or ""
    else:
        doc = inspect.getdoc(obj) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    end = first.find(". ")
    return first[:end + 1] if end >= 0 else first


class _RootGroup(TyperGroup):
    """Builds only the subcommand that runs, and draws `starcli --help` itself.

    Typer turns every registered function into a click command up front, reading each
    signature (about 0.1 s for these eight), and its help renderer (typer.rich_utils) imports
    rich.markdown, rich.syntax, rich.traceback and pygments (about 0.3 s). A shell script that
    calls `starcli fetch …` pays for one command; the root help for none. Subcommands' help and
    every error message still go through typer's renderer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._built: dict[str, Any] = {}

    def list_commands(self, ctx) -> list[str]:  # noqa: ARG002
        return [_load(m, a)[0] for m, a, _ in _COMMANDS]

    def get_command(self, ctx, cmd_name: str):  # noqa: ARG002
        if cmd_name not in self._built:
            for module_name, attr, kind in _COMMANDS:
                name, obj = _load(module_name, attr)
                if name == cmd_name:
                    self._built[name] = _build(name, obj, kind)
                    break
            else:
                return None
        return self._built[cmd_name]

    def format_help(self, ctx, formatter) -> None:  # noqa: ARG002 - rich prints directly
        from rich.console import Console
        from rich.padding import Padding
        from rich.panel import Panel
        from rich.table import Table

        console = Console(highlight=False)
        pieces = self.collect_usage_pieces(ctx)
        console.print(Padding(f"[bold]Usage:[/] {ctx.command_path} {' '.join(pieces)}",
                              (1, 1, 0, 1)))
        if self.help:
            console.print(Padding(self.help.strip(), (1, 1, 1, 1)))

        def panel(title: str, rows: list[tuple[str, str]]) -> None:
            table = Table.grid(padding=(0, 2))
            table.add_column(style="bold cyan", no_wrap=True)
            table.add_column()
            for name, text in rows:
                table.add_row(name, text)
            console.print(Panel(table, title=title, title_align="left", border_style="dim"))

        options = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and not getattr(param, "hidden", False):
                options.append((record[0], record[1] or ""))
        panel("Options", options)
        commands = []
        for module_name, attr, kind in _COMMANDS:
            name, obj = _load(module_name, attr)
            commands.append((name, _short_help(obj, kind)))
        panel("Commands", commands)


def _build(name: str, obj: Any, kind: str):
    """The click command typer makes of one registered function or sub-app."""
    if kind == "group":
        command = typer.main.get_group(obj)  # a group even with one command (import)
    else:
        single = typer.Typer(context_settings=_CONTEXT, rich_markup_mode="rich")
        # A command may add its own click context settings (train: family flags parsed
        # from the extra words).
        settings = {**_CONTEXT, **getattr(obj, "context_settings", {})}
        single.command(name=name, context_settings=settings)(obj)
        command = typer.main.get_command(single)
    command.name = name
    return command


_CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    cls=_RootGroup,
    name="starcli",
    help="StarGAN-style multi-domain face translation: fetch, prepare, train, translate, eval.\n\n"
         "Example: starcli demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=_CONTEXT,
    rich_markup_mode="rich",
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


def main() -> None:
    app()
