"""`starcli train`: train a StarGAN model on one prepared dataset, or jointly on several."""

from __future__ import annotations

import json
import os
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


def _choice(value: str | None, choices: tuple[str, ...], flag: str) -> None:
    if value is not None and value not in choices:
        raise typer.BadParameter(f"must be one of {', '.join(choices)}, not '{value}'",
                                 param_hint=flag)


def _forwarded_args(ctx: typer.Context, drop: tuple[str, ...]) -> list[str]:
    """The options the user gave (not defaults), as command-line words, minus `drop`."""
    words: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name in drop or name not in ctx.params or param.param_type_name != "option":
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name == "DEFAULT":  # Typer may vendor its own click
            continue
        value = ctx.params[name]
        flag = max(param.opts, key=len)
        if param.is_flag:
            if value:
                words.append(flag)
            elif param.secondary_opts:
                words.append(max(param.secondary_opts, key=len))
        elif param.multiple:
            for item in value or ():
                words += [flag, str(item)]
        elif value is not None:
            words += [flag, str(value)]
    return words


@cli_errors
def train(
    ctx: typer.Context,
    dataset: Annotated[list[str] | None, typer.Option(
        "--dataset", "-d", help="Prepared dataset to train on (repeat or comma-separate; "
                                "several need --joint).", show_default=False)] = None,
    joint: Annotated[bool, typer.Option(
        "--joint", help="One model over several datasets with StarGAN mask vectors "
                        "(default datasets: celeba,rafd).")] = False,
    datasets: Annotated[str | None, typer.Option(
        "--datasets", help="Comma-separated datasets for --joint, e.g. celeba,rafd.",
        show_default=False)] = None,
    mix: Annotated[str | None, typer.Option(
        "--mix", help="Joint sampling weights per dataset, e.g. 1,1 (default: alternate "
                      "batches 1:1 as the paper).", show_default=False)] = None,
    family: Annotated[str | None, typer.Option(
        "--family", help="Model family: stargan-v1 (the only one so far). "
                         "[default: stargan-v1]", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="stargan-v1: paper (official hyper-parameters), demo (fast CPU "
                         "recipe) or tiny (tests). [default: paper]", show_default=False)] = None,
    iters: Annotated[int | None, typer.Option("--iters", min=1, help="Training iterations.",
                                              show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Images per batch (the paper used 16).",
        show_default=False)] = None,
    image_size: Annotated[int | None, typer.Option(
        "--image-size", min=4, help="Must match the prepared data (`starcli prepare --size`).",
        show_default=False)] = None,
    adv_loss: Annotated[str | None, typer.Option(
        "--adv-loss", help="wgan-gp (paper), lsgan, vanilla or hinge.",
        show_default=False)] = None,
    n_critic: Annotated[int | None, typer.Option(
        "--n-critic", min=1, help="D updates per G update.", show_default=False)] = None,
    lambda_cls: Annotated[float | None, typer.Option(
        "--lambda-cls", min=0.0, help="Weight of the domain-classification loss.",
        show_default=False)] = None,
    lambda_rec: Annotated[float | None, typer.Option(
        "--lambda-rec", min=0.0, help="Weight of the cycle-reconstruction loss.",
        show_default=False)] = None,
    lambda_gp: Annotated[float | None, typer.Option(
        "--lambda-gp", min=0.0, help="Weight of the gradient penalty (wgan-gp).",
        show_default=False)] = None,
    g_lr: Annotated[float | None, typer.Option("--g-lr", help="Generator learning rate.",
                                               show_default=False)] = None,
    d_lr: Annotated[float | None, typer.Option("--d-lr", help="Discriminator learning rate.",
                                               show_default=False)] = None,
    lr_decay_iters: Annotated[int | None, typer.Option(
        "--lr-decay-iters", min=0, help="Decay the learning rates linearly to 0 over the last "
                                        "N iterations.", show_default=False)] = None,
    g_conv_dim: Annotated[int | None, typer.Option(
        "--g-conv-dim", min=1, help="Width of G's first layer.", show_default=False)] = None,
    d_conv_dim: Annotated[int | None, typer.Option(
        "--d-conv-dim", min=1, help="Width of D's first layer.", show_default=False)] = None,
    g_repeat_num: Annotated[int | None, typer.Option(
        "--g-repeat-num", min=0, help="Residual blocks in G.", show_default=False)] = None,
    g_down_num: Annotated[int | None, typer.Option(
        "--g-down-num", min=1, help="Stride-2 convs in G before its residual blocks (paper: 2).",
        show_default=False)] = None,
    g_ema: Annotated[float | None, typer.Option(
        "--g-ema", min=0.0, max=0.9999999, help="Keep a moving average of G's weights with "
        "this decay (e.g. 0.999) for samples, translate and eval; 0 turns it off.",
        show_default=False)] = None,
    d_repeat_num: Annotated[int | None, typer.Option(
        "--d-repeat-num", min=1, help="Strided convs in D.", show_default=False)] = None,
    precision: Annotated[str | None, typer.Option(
        "--precision", help="fp32, bf16, fp16 (CUDA) or auto (bf16 where the hardware has "
                            "it). [default: auto]", show_default=False)] = None,
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last", help="NHWC tensors [default: on for CUDA].",
        show_default=False)] = None,
    compile_: Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="torch.compile G and D (falls back to eager).",
        show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu, cuda or cuda:N. [default: auto]",
        show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0, help="Data-loader processes. [default: 0]",
        show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Random seed. [default: 0]",
                                             show_default=False)] = None,
    run_dir: Annotated[str | None, typer.Option(
        "--run-dir", help="Output folder [default: runs/<dataset>-<timestamp>].",
        show_default=False)] = None,
    resume: Annotated[str | None, typer.Option(
        "--resume", help="Continue a run: its folder, a checkpoint folder, or `latest` (an "
                         "older checkpoint of a run continues in a new run folder).",
        show_default=False)] = None,
    sample_every: Annotated[int | None, typer.Option(
        "--sample-every", min=0, help="Iterations between sample grids (0: only at the end).",
        show_default=False)] = None,
    save_every: Annotated[int | None, typer.Option(
        "--save-every", min=0, help="Iterations between checkpoints (0: only at the end).",
        show_default=False)] = None,
    log_every: Annotated[int | None, typer.Option(
        "--log-every", min=1, help="Iterations between metric records.",
        show_default=False)] = None,
    keep: Annotated[int | None, typer.Option(
        "--keep", min=1, help="Checkpoints to keep.", show_default=False)] = None,
    gpus: Annotated[int | None, typer.Option(
        "--gpus", min=1, help="Train in N processes on this machine, one per GPU (DDP via "
                              "torchrun); --batch-size is then the global batch. With "
                              "--device cpu the processes share the CPU (for testing).",
        show_default=False)] = None,
    dist_timeout: Annotated[int | None, typer.Option(
        "--dist-timeout", min=1, help="Seconds a process waits for the others before the job "
                                      "fails (several processes only). [default: 600]",
        show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the resolved configuration and exit.")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a model (StarGAN v1 by default: --family) on prepared data.

    Writes runs/<dataset>-<timestamp>/ (runs/latest points at it): config.json, metrics.jsonl,
    TensorBoard logs in tb/, sample grids in samples/, checkpoints in checkpoints/.
    Ctrl-C saves a checkpoint; continue with --resume.

    Examples:

      starcli train --dataset demo-celeba --preset demo

      starcli train --joint --datasets celeba,rafd --preset paper --device cuda

      starcli train --resume latest

      starcli train --dataset celeba --gpus 4 --batch-size 64

      torchrun --nproc_per_node 4 -m starcli train --dataset celeba --batch-size 64
    """
    from starcli.config import PRECISIONS, presets_of
    from starcli.errors import ConfigError
    from starcli.families import DEFAULT_FAMILY, FAMILY_NAMES
    from starcli.families.stargan_v1.config import ADV_LOSSES

    _choice(family, FAMILY_NAMES, "--family")
    try:
        _choice(preset, tuple(presets_of(family or DEFAULT_FAMILY)), "--preset")
    except ConfigError as exc:  # an unknown family is caught just above
        raise typer.BadParameter(str(exc), param_hint="--preset") from None
    _choice(adv_loss, ADV_LOSSES, "--adv-loss")
    _choice(precision, PRECISIONS, "--precision")
    names: list[str] = []
    for value in list(dataset or []) + ([datasets] if datasets else []):
        names.extend(split_csv(value) or ())
    overrides = dict(
        datasets=tuple(names) or None, joint=joint or None, mix=split_numbers(mix, "--mix", float),
        iters=iters, batch_size=batch_size, image_size=image_size, adv_loss=adv_loss,
        n_critic=n_critic, lambda_cls=lambda_cls, lambda_rec=lambda_rec, lambda_gp=lambda_gp,
        g_lr=g_lr, d_lr=d_lr, lr_decay_iters=lr_decay_iters, g_conv_dim=g_conv_dim,
        d_conv_dim=d_conv_dim, g_repeat_num=g_repeat_num, g_down_num=g_down_num,
        g_ema=g_ema, d_repeat_num=d_repeat_num,
        precision=precision, channels_last=channels_last, compile=compile_, device=device,
        workers=workers, seed=seed, run_dir=run_dir, sample_every=sample_every,
        save_every=save_every, log_every=log_every, keep_last=keep,
        home=str(home) if home is not None else None, dist_timeout=dist_timeout,
    )
    from starcli.config import TrainConfig
    from starcli.engine import check_launch, describe_run, launch_local, resume_config
    from starcli.engine import train as run_train

    if resume is not None:
        cfg = resume_config(resume, preset=preset, family=family, **overrides)
    else:
        cfg = TrainConfig.from_preset(preset or "paper", family=family, **overrides)
    if gpus is not None and gpus > 1 and not dry_run:
        code = launch_local(gpus, cfg, _forwarded_args(ctx, drop=("gpus",)))
        if code:
            console.print(f"[bold red]Error:[/] training in {gpus} processes failed (exit "
                          f"{code}); the failing rank's error is above.", soft_wrap=True)
        raise typer.Exit(code)
    is_main = int(os.environ.get("RANK", "0") or 0) == 0
    if cfg.batch_size < 8 and is_main:
        console.print(f"[yellow]Warning:[/] --batch-size {cfg.batch_size} is below 8; the paper "
                      "used 16 and the critic's estimates get noisy with tiny batches.")

    if dry_run:
        if gpus is not None and gpus > 1:
            check_launch(gpus, cfg)
        if not json_out:
            console.print_json(cfg.to_json())
        plan = describe_run(cfg)
        summary = plan.summary()
        if json_out:
            emit_json(summary)
        else:
            p = summary["parameters"]
            counts = " / ".join(f"{name} {n:,}" for name, n in p.items())
            console.print(f"{summary['family']}: device {summary['device']}, precision "
                          f"{summary['precision']}, c_dim {plan.layout.c_dim}, {counts} "
                          "parameters")
            console.print("[green]✓[/] configuration is valid (dry run: nothing trained)")
        return

    if not is_main:  # ranks of a torchrun job: rank 0 shows progress and the summary
        run_train(cfg)
        return
    with RichProgress() as progress:
        result = run_train(cfg, progress=progress)

    if result["interrupted"]:
        console.print(f"[yellow]Interrupted[/] at step {result['step']:,}/{result['iters']:,}; "
                      f"checkpoint saved: {result['checkpoint']}", soft_wrap=True)
        console.print(f"  Resume with: [bold]{result['resume_command']}[/]", soft_wrap=True)
    else:
        console.print(f"[green]✓[/] trained {result['step']:,} iterations in "
                      f"{result['seconds']:.0f}s ({result['images_per_s']:.1f} images/s, "
                      f"{result['device']}, {result['precision']})")
        console.print(f"  run:        {result['run_dir']}", soft_wrap=True)
        if result.get("branched_from"):
            console.print(f"  branched from: {result['branched_from']} (that run is unchanged)",
                          soft_wrap=True)
        console.print(f"  checkpoint: {result['checkpoint']}", soft_wrap=True)
        if result.get("samples"):
            console.print(f"  samples:    {result['samples']}", soft_wrap=True)
        metrics = result.get("metrics") or {}
        shown = {k: round(v, 4) for k, v in metrics.items()
                 if k in ("D/cls", "D/acc_real", "G/cls", "G/rec", "G/acc_fake")}
        if shown:
            console.print(f"  last:       {json.dumps(shown)}", soft_wrap=True)
    if json_out:
        emit_json(result)
