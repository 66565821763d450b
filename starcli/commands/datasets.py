"""`starcli datasets` and `starcli datasets show NAME`: what is fetched and prepared."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from starcli.commands._common import HomeOpt, JsonOpt, cli_errors, console, emit_json

app = typer.Typer(
    help="List the registry's datasets with what is fetched and prepared.\n\n"
         "Examples: starcli datasets; starcli datasets show celeba --grid celeba.png",
    invoke_without_command=True, no_args_is_help=False,
)


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@app.callback()
@cli_errors
def datasets(ctx: typer.Context, home: HomeOpt = None, json_out: JsonOpt = False) -> None:
    """List every dataset: access, raw files and prepared sizes with their label tables.

    Example: starcli datasets
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from starcli.data.catalog import list_datasets
    from starcli.paths import resolve_home

    entries = list_datasets(resolve_home(home))
    table = Table(title="starcli datasets", show_lines=False)
    for col in ("name", "access", "format", "raw", "prepared (size: images, splits)", "labels"):
        table.add_column(col)
    for e in entries:
        raw = e["raw"]
        raw_text = f"{raw.get('files', 0):,} files, {_bytes(raw.get('bytes', 0))}" \
            if raw.get("files") else "-"
        prep, labels = [], []
        for p in e["prepared"]:
            if not p.get("complete"):
                prep.append(f"{p['size']}px: incomplete")
                continue
            splits = "/".join(f"{v:,}" for v in p["splits"].values())
            prep.append(f"{p['size']}px: {p['images']:,} ({splits})")
            labels.append(",".join(p["label_names"]))
        table.add_row(e["name"], e["access"], e["format"], raw_text, "\n".join(prep) or "-",
                      "\n".join(labels) or "-")
    console.print(table)
    if json_out:
        emit_json({"datasets": entries})


@app.command("show")
@cli_errors
def show(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    grid: Annotated[Path | None, typer.Option(
        "--grid", help="Also write a PNG contact sheet of labelled samples.")] = None,
    size: Annotated[int | None, typer.Option(
        "--size", help="Which prepared size to show in the grid (default: largest).")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one dataset: registry facts, raw files, prepared shards and label tables.

    Example: starcli datasets show demo-celeba --grid sheet.png
    """
    from rich.table import Table

    from starcli.data.catalog import show_dataset
    from starcli.paths import resolve_home

    info = show_dataset(resolve_home(home), name, grid=grid, size=size)
    reg = info.get("registry") or {}
    console.print(f"[bold]{info['name']}[/]: {info['title']}")
    console.print(f"access {info['access']}, format {info['format']}"
                  + (f", {reg['image_count']:,} images" if reg.get("image_count") else ""))
    if reg.get("license"):
        console.print(f"licence: {reg['license']}")
    raw = info["raw"]
    console.print(f"raw: {raw.get('path')} "
                  + (f"({raw['files']:,} files, {_bytes(raw['bytes'])})" if raw.get("files")
                     else "(not fetched)"))
    for p in info["prepared"]:
        t = Table(title=f"prepared {p['size']}px  {p['path']}")
        t.add_column("field")
        t.add_column("value")
        if not p.get("complete"):
            t.add_row("state", "incomplete (rerun the same `starcli prepare` to resume)")
        else:
            t.add_row("splits", ", ".join(f"{k} {v:,}" for k, v in p["splits"].items()))
            t.add_row("labels", f"{p['label_kind']}: {', '.join(p['label_names'])}")
            t.add_row("columns", ", ".join(p["label_columns"]))
            t.add_row("shards", f"{p['shards']} ({_bytes(p['bytes'])})")
            t.add_row("skipped", f"{p['skipped']}" + (
                " — " + ", ".join(f"{r}: {n}" for r, n in p["skipped_reasons"].items())
                if p["skipped"] else ""))
        console.print(t)
    if grid is not None:
        console.print(f"[green]✓[/] contact sheet → {grid}")
    if json_out:
        emit_json(info)
