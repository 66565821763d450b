"""`starcli prepare NAME`: pack raw images into HDF5 shards with label tables."""

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
    split_csv,
    split_numbers,
)


@cli_errors
def prepare(
    name: Annotated[str, typer.Argument(help="Dataset to prepare (celeba, rafd, demo-celeba, "
                                        "demo-rafd), or `folder` for your own images.")],
    path: Annotated[Path | None, typer.Argument(
        help="`folder` only: the folder with one sub-folder per domain.")] = None,
    attrs: Annotated[str | None, typer.Option(
        "--attrs", help="CelebA format: comma-separated attributes to train on.")] = None,
    size: Annotated[int, typer.Option("--size", min=8, max=1024,
                                      help="Output image size in pixels.")] = 128,
    crop: Annotated[int | None, typer.Option(
        "--crop", min=8, help="Centre crop before resizing (default: 178 CelebA, 256 RaFD).")
    ] = None,
    split: Annotated[str, typer.Option(
        "--split", help="CelebA: `official` (list_eval_partition.txt) or `stargan` (the "
                        "official StarGAN code's 1,999 random test images).")] = "official",
    angles: Annotated[str | None, typer.Option(
        "--angles", help="RaFD: camera angles to keep, e.g. 45,90,135.")] = None,
    gazes: Annotated[str | None, typer.Option(
        "--gazes", help="RaFD: gazes to keep, e.g. left,frontal,right.")] = None,
    test_subjects: Annotated[str | None, typer.Option(
        "--test-subjects", help="RaFD: subject ids for the test split, e.g. 1,2,3.")] = None,
    test_fraction: Annotated[float, typer.Option(
        "--test-fraction", min=0.0, max=0.9, help="RaFD/folder: share of subjects/images "
                                                  "held out for testing.")] = 0.1,
    dataset_name: Annotated[str | None, typer.Option(
        "--name", help="`folder` only: the name to prepare it under.")] = None,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="`folder` only: CSV of file name + 0/1 attribute columns.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=0,
                                         help="Decode/resize processes.")] = 2,
    compression: Annotated[str, typer.Option(
        "--compression", help="Shard compression: none, lzf or gzip.")] = "none",
    force: Annotated[bool, typer.Option("--force", help="Rebuild every shard.")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Pack a dataset into HDF5 shards under <home>/prepared/NAME/SIZE/.

    Examples:

      starcli prepare celeba --attrs Black_Hair,Blond_Hair,Male,Young

      starcli prepare rafd --angles 45,90,135 --size 128

      starcli prepare folder ./my_faces --name myfaces --size 64
    """
    if split not in ("official", "stargan"):
        raise typer.BadParameter("must be `official` or `stargan`", param_hint="--split")
    if compression not in ("none", "lzf", "gzip"):
        raise typer.BadParameter("must be none, lzf or gzip", param_hint="--compression")
    if test_subjects and test_fraction != 0.1:
        raise typer.BadParameter("give --test-subjects or --test-fraction, not both",
                                 param_hint="--test-subjects")
    source = None
    if name == "folder":
        if path is None or dataset_name is None:
            raise typer.BadParameter("usage: starcli prepare folder PATH --name NAME",
                                     param_hint="PATH")
        if not path.is_dir():
            raise typer.BadParameter(f"{path} is not a folder", param_hint="PATH")
        source, name = path.expanduser(), dataset_name
    elif path is not None:
        raise typer.BadParameter("a PATH is only taken by `starcli prepare folder`",
                                 param_hint="PATH")
    from starcli.data.prepare import PrepareConfig
    from starcli.data.prepare import prepare as run_prepare
    from starcli.paths import resolve_home
    cfg = PrepareConfig(
        home=resolve_home(home), dataset=name, size=size, crop=crop,
        attrs=split_csv(attrs), split=split, angles=split_numbers(angles, "--angles", int),
        gazes=split_csv(gazes), test_subjects=split_numbers(test_subjects, "--test-subjects", int),
        test_fraction=test_fraction, workers=workers,
        compression=None if compression == "none" else compression, force=force,
        source=source, labels_csv=labels.expanduser() if labels else None,
    )
    with RichProgress() as progress:
        summary = run_prepare(cfg, progress=progress)
    skipped = summary.get("skipped", [])
    splits = ", ".join(f"{k} {v:,}" for k, v in summary.get("splits", {}).items())
    console.print(f"[green]✓[/] {summary.get('dataset', name)} at {size}px: {splits}"
                  + (f"; skipped {len(skipped)} (see manifest.json)" if skipped else ""))
    console.print(f"  {summary.get('path', '')}")
    if json_out:
        emit_json(summary)
