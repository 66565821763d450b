"""`starcli fetch NAME`: download, import or generate a dataset's raw files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from starcli.commands._common import (
    HomeOpt,
    JsonOpt,
    RichProgress,
    cli_errors,
    console,
    emit_json,
)


@cli_errors
def fetch(
    name: Annotated[str, typer.Argument(help="Dataset name from the registry (see `starcli "
                                        "datasets`), or `demo` for both synthetic sets.")],
    mirror: Annotated[list[str] | None, typer.Option(
        "--mirror", help="Base URL to try first (repeatable); files are fetched as "
                         "BASE_URL/<file name>.")] = None,
    source: Annotated[Path | None, typer.Option(
        "--from", help="Import a local archive or folder instead of downloading.")] = None,
    count: Annotated[int | None, typer.Option(
        "--count", min=1, help="Synthetic CelebA-format sets: number of images.")] = None,
    subjects: Annotated[int | None, typer.Option(
        "--subjects", min=2, help="Synthetic RaFD-format sets: number of subjects.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Synthetic sets: random seed.")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=0,
                                         help="Synthetic sets: worker processes.")] = 0,
    force: Annotated[bool, typer.Option(
        "--force", help="Download, verify and extract again even if present.")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download, import (--from) or generate a dataset into <home>/raw/NAME/.

    Examples:

      starcli fetch celeba

      starcli fetch celeba --mirror https://example.org/celeba

      starcli fetch rafd --from ~/Downloads/RaFD.zip

      starcli fetch demo --count 4000
    """
    from rich.markup import escape

    from starcli.data.fetch import FetchConfig
    from starcli.data.fetch import fetch as run_fetch
    from starcli.paths import resolve_home

    cfg = FetchConfig(home=resolve_home(home), dataset=name, mirrors=tuple(mirror or ()),
                      source=source.expanduser() if source else None, count=count,
                      subjects=subjects, seed=seed, workers=workers, force=force)
    with RichProgress() as progress:
        summary = run_fetch(cfg, progress=progress, handlers=format_handlers())
    parts = summary.get("parts", [summary])
    for part in parts:
        console.print(f"[green]✓[/] {escape(part['dataset'])} → {escape(str(part['path']))}",
                      soft_wrap=True)
    if json_out:
        emit_json(summary)


def format_handlers() -> dict:
    """Registry formats fetched by model code. Each handler imports its family only when it
    runs, so fetching a dataset never loads torch."""

    def stargan_v1_checkpoint(spec, cfg, progress):
        from starcli.families.stargan_v1.importer import fetch_pretrained

        return fetch_pretrained(spec, cfg, progress)

    def stargan_v2_checkpoint(spec, cfg, progress):
        from starcli.families.stargan_v2.importer import fetch_pretrained_v2

        return fetch_pretrained_v2(spec, cfg, progress)

    return {"stargan-v1-checkpoint": stargan_v1_checkpoint,
            "stargan-v2-checkpoint": stargan_v2_checkpoint}
