"""`starcli import stargan-v1|stargan-v2`: turn official weights into a starcli checkpoint."""

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
)

COMMAND_NAME = "import"

app = typer.Typer(
    help="Import weights trained by other implementations into starcli checkpoints.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_OFFICIAL = "Black_Hair,Blond_Hair,Brown_Hair,Male,Young"


@app.command("stargan-v1")
@cli_errors
def stargan_v1(
    generator: Annotated[Path, typer.Argument(
        help="The official generator weights, e.g. 200000-G.ckpt.", dir_okay=False,
        show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Run directory to write (checkpoints/step-N/ inside).",
        file_okay=False, show_default=False)],
    discriminator: Annotated[Path | None, typer.Option(
        "--discriminator", "-d", help="The matching *-D.ckpt (needed to estimate the "
                                      "inputs' own labels when translating).",
        dir_okay=False)] = None,
    attrs: Annotated[str, typer.Option(
        "--attrs", help="The attributes the model was trained with, in training order "
                        "(the released models: the default).")] = _OFFICIAL,
    image_size: Annotated[int, typer.Option(
        "--image-size", min=8, help="The resolution the model was trained at.")] = 128,
    force: Annotated[bool, typer.Option(
        "--force", help="Write into an --out folder that already holds checkpoints or a run "
                        "(its checkpoints are replaced).")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Convert official StarGAN v1 weights (yunjey/stargan *-G.ckpt, *-D.ckpt).

    The files carry no metadata: --attrs and --image-size must match training; a mismatch
    is reported as a key/shape difference. Files are read without running any code in them.

    Example:

      starcli import stargan-v1 200000-G.ckpt -d 200000-D.ckpt --out runs/official-128

      starcli translate photos/ --to Blond_Hair --checkpoint runs/official-128
    """
    from starcli.families.stargan_v1.importer import import_stargan_v1
    from starcli.paths import resolve_home

    names = split_csv(attrs) or ()
    with RichProgress() as progress:
        path = import_stargan_v1(generator.expanduser(),
                                 discriminator.expanduser() if discriminator else None,
                                 names, image_size, out.expanduser(), progress=progress,
                                 home=resolve_home(home), force=force)
    console.print(f"[green]✓[/] imported → {path}")
    if discriminator is None:
        console.print("  [yellow]no --discriminator:[/] translate needs --labels FILE.csv or "
                      "targets that name every label")
    if json_out:
        emit_json({"checkpoint": str(path), "attrs": list(names), "image_size": image_size,
                   "discriminator": discriminator is not None})


@app.command("stargan-v2")
@cli_errors
def stargan_v2(
    nets_ema: Annotated[Path, typer.Argument(
        help="The official moving-average weights, e.g. 100000_nets_ema.ckpt.",
        dir_okay=False, show_default=False)],
    domains: Annotated[str, typer.Option(
        "--domains", help="The model's domains in training order (the sorted folder names), "
                          "e.g. cat,dog,wild (AFHQ) or female,male (CelebA-HQ).",
        show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Run directory to write (checkpoints/step-N/ inside).",
        file_okay=False, show_default=False)],
    image_size: Annotated[int, typer.Option(
        "--image-size", min=16, help="The resolution the model was trained at.")] = 256,
    discriminator: Annotated[Path | None, typer.Option(
        "--discriminator", "-d", help="An official *_nets.ckpt to take D from (not "
                                      "released for the official models).",
        dir_okay=False)] = None,
    wing: Annotated[Path | None, typer.Option(
        "--wing", help="wing.ckpt, the FAN weights that make the face masks of w_hpf>0 "
                       "models (not needed when the file has a 'fan' entry).",
        dir_okay=False)] = None,
    no_masks: Annotated[bool, typer.Option(
        "--no-masks", help="Import a w_hpf>0 model (CelebA-HQ) without FAN masks: its "
                           "high-pass skips are not used and outputs lose fine facial "
                           "detail.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Write into an --out folder that already holds checkpoints or a run "
                        "(its checkpoints are replaced).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert official StarGAN v2 weights (clovaai/stargan-v2 *_nets_ema.ckpt).

    The file carries no config: --domains and --image-size must match training; K, w_hpf
    and the widths are read from the weights. Files are read without running any code in
    them. The CelebA-HQ model (w_hpf 1) needs its FAN (the file's 'fan' entry or --wing
    wing.ckpt), copied into the checkpoint, or --no-masks.

    Example:

      starcli import stargan-v2 100000_nets_ema.ckpt --domains cat,dog,wild --out runs/v2-afhq

      starcli translate photos/ --to dog --checkpoint runs/v2-afhq
    """
    from starcli.families.stargan_v2.importer import import_stargan_v2

    names = split_csv(domains) or ()
    for flag, value in (("--wing", wing), ("--discriminator", discriminator)):
        if value is not None and not value.expanduser().is_file():
            raise typer.BadParameter(f"{value}: no such file.", param_hint=flag)
    with RichProgress() as progress:
        path = import_stargan_v2(nets_ema.expanduser(), names, out.expanduser(),
                                 image_size=image_size, wing=wing.expanduser() if wing else None,
                                 no_masks=no_masks,
                                 discriminator=discriminator.expanduser() if discriminator
                                 else None, force=force, progress=progress)
    console.print(f"[green]✓[/] imported → {path}")
    if json_out:
        emit_json({"checkpoint": str(path), "domains": list(names), "image_size": image_size,
                   "discriminator": discriminator is not None})
