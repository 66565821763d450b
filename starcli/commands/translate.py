"""`starcli translate INPUT... --to SPEC`: translate image files and folders."""

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
def translate(
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files and folders (folders are walked recursively).", show_default=False)],
    to: Annotated[list[str] | None, typer.Option(
        "--to", "-t", help="Target: comma-separated labels, e.g. Blond_Hair, Male=0, "
                           "Young=flip, happy, or a StarGAN v2 domain such as male (repeat "
                           "--to for several targets).",
        show_default=False)] = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", "-c", help="Run directory, checkpoint directory, or a fetched "
                                   "pretrained name (pretrained-celeba-128). Default: "
                                   "runs/latest.", show_default=False)] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output folder: <out>/<target>/<input path>.png.",
        file_okay=False)] = Path("translated"),
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Images per model call.")] = 16,
    device: Annotated[str, typer.Option(
        "--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(
        "--precision", help="auto (bf16 where the hardware runs it natively), fp32, bf16 or "
                            "fp16 (GPU only).")] = "auto",
    fmt: Annotated[str, typer.Option(
        "--format", help="png (lossless) or jpg.")] = "png",
    jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", min=1, max=100,
                                              help="Quality for --format jpg.")] = 95,
    grid: Annotated[bool, typer.Option(
        "--grid", help="Also write <out>/_grid/<input>: the input and every target side by "
                       "side.")] = False,
    html: Annotated[bool, typer.Option(
        "--html", help="Also write <out>/index.html: each input beside its outputs, and the "
                       "skipped files with their reasons.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Rewrite outputs that exist (default: skip them, so a re-run "
                            "resumes).")] = False,
    manifest: Annotated[str, typer.Option(
        "--manifest", help="Manifest format: jsonl or csv (<out>/manifest.*).")] = "jsonl",
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="CSV of the inputs' own labels: a `file` column, then one 0/1 "
                         "column per label (default: estimated by the discriminator).",
        dir_okay=False)] = None,
    mix_label_spaces: Annotated[bool, typer.Option(
        "--mix-label-spaces", help="Allow one --to to set labels of two datasets (the model "
                                   "never trained on that).")] = False,
    align: Annotated[bool, typer.Option(
        "--align", help="Own photos: detect the largest face and crop it like CelebA's "
                        "aligned images.")] = False,
    styles: Annotated[int, typer.Option(
        "--styles", min=1, max=100, help="StarGAN v2: this many random (latent) styles per "
                                         "input and target, one file each (-s00, -s01, ...).")] = 1,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="StarGAN v2: the styles' seed; style k is the same for every input.")
    ] = None,
    psi: Annotated[float, typer.Option(
        "--psi", min=0.0, max=1.0, help="StarGAN v2: truncation toward the domain's mean "
                                        "style (1: none, 0: the mean style).")] = 1.0,
    ref: Annotated[list[Path] | None, typer.Option(
        "--ref", help="StarGAN v2: reference image(s) or folder(s); each output takes a "
                      "reference's style and domain (instead of --to).")] = None,
    ref_domain: Annotated[str | None, typer.Option(
        "--ref-domain", help="StarGAN v2: the references' domain (default: their folder "
                             "name when it is a domain, else the discriminator's guess).")
    ] = None,
    crop: Annotated[int | None, typer.Option(
        "--crop", min=1, help="Cut the centre square this many pixels wide (with --align: of "
                              "the 178-pixel CelebA frame) instead of the framing the model "
                              "was trained with.")] = None,
    paste_back: Annotated[bool, typer.Option(
        "--paste-back", help="With --align: blend the translated face back into the "
                             "original photo at its own resolution.")] = False,
    workers: Annotated[int, typer.Option(
        "--workers", min=0, help="Decode/encode threads (0: automatic).")] = 0,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Translate every image in INPUT files and folders to each --to target.

    Labels a target does not name keep the input's own values (estimated by the checkpoint's
    discriminator, or from --labels). Unreadable files are listed as skipped in the
    manifest; the run still succeeds.

    Examples:

      starcli translate photos/ --to Blond_Hair --to Male=flip

      starcli translate me.jpg --to Young=flip --align --paste-back -c pretrained-celeba-128

      starcli translate faces/ --to happy --to angry --checkpoint runs/joint-20240101-120000

      starcli translate faces/ --to male --styles 5 --seed 0 -c runs/v2-run   # StarGAN v2

      starcli translate faces/ --ref refs/ --grid -c runs/v2-run   # styles of references
    """
    from starcli.translate import TranslateConfig
    from starcli.translate import translate as run_translate

    cfg = TranslateConfig(
        inputs=tuple(inputs), targets=tuple(to or ()),
        checkpoint=Path(checkpoint).expanduser() if checkpoint else None, out=out,
        batch_size=batch_size, device=device, precision=precision, format=fmt.lower(),
        jpeg_quality=jpeg_quality, grid=grid, html=html, overwrite=overwrite,
        manifest=manifest.lower(), labels=labels, mix_label_spaces=mix_label_spaces,
        align=align, crop=crop, paste_back=paste_back, workers=workers, home=home,
        styles=styles, seed=seed, psi=psi, refs=tuple(ref or ()), ref_domain=ref_domain)
    with RichProgress() as progress:
        result = run_translate(cfg, progress=progress)
    parts = [f"[green]✓[/] translated {result.translated} image"
             f"{'s' if result.translated != 1 else ''} to {len(result.targets)} target"
             f"{'s' if len(result.targets) != 1 else ''} → {result.out}"]
    if result.translated:
        parts.append(f"({result.images_per_s:.2f} images/s, {result.device}, "
                     f"{result.precision})")
    console.print(" ".join(parts))
    if result.existing:
        console.print(f"  {result.existing} already done (kept; --overwrite redoes them)")
    if result.skipped:
        console.print(f"  [yellow]{len(result.skipped)} skipped[/] (reasons in "
                      f"{result.manifest})")
    console.print(f"  manifest: {result.manifest}")
    if html:
        console.print(f"  page: {result.out / 'index.html'}")
    if json_out:
        emit_json(result.to_dict())
