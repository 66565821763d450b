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


# ---- family options: declared by each family's torch-free config module -----------------
# Every field of a family's OPTIONS dataclass with metadata {"help": ...} is a flag of
# `starcli train --family NAME` (--kebab-case; "choices", "min" and "max" are checked here, so
# a bad value is a usage error naming the flag before the config is built).


def family_flags(family: str) -> dict[str, tuple[str, type, dict]]:
    """--flag → (field name, value type, metadata) for one family (torch-free)."""
    from dataclasses import MISSING, fields

    from starcli.families import family_info

    out = {}
    for f in fields(family_info(family).options):
        if "help" not in f.metadata:
            continue
        kind = {"int": int, "float": float, "str": str, "bool": bool}.get(str(f.type))
        if kind is None:
            kind = type(f.default) if f.default is not MISSING else str
        out["--" + f.name.replace("_", "-")] = (f.name, kind, dict(f.metadata))
    return out


def _usage_error(message: str) -> Exception:
    """A click usage error (exit 2) of the click typer runs on (newer typer vendors its own,
    and only its exceptions are caught by its command)."""
    try:
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError
    return UsageError(message)


def _range(meta: dict) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{lo}<=x<={hi}"
    return f"x>={lo}" if lo is not None else f"x<={hi}"


def _convert(flag: str, kind: type, meta: dict, text: str):
    hint = f"'{flag}'"
    if kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            noun = "integer" if kind is int else "float"
            raise typer.BadParameter(f"{text!r} is not a valid {noun}.", param_hint=hint
                                     ) from None
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise typer.BadParameter(f"{value} is not in the range {_range(meta)}.",
                                     param_hint=hint)
    else:
        value = text
    if "choices" in meta:
        _choice(value, tuple(meta["choices"]), flag)
    return value


def parse_family_flags(words: list[str], family: str) -> dict[str, object]:
    """The family's options given as `--kebab-case VALUE` (or `--x/--no-x` for booleans)
    words, by field name; a usage error (exit 2) naming the family for anything else."""

    specs = family_flags(family)
    valid = ", ".join(specs) or "none"
    out: dict[str, object] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        flag, eq, inline = word.partition("=")
        spec = specs.get(flag)
        negated = spec is None and flag.startswith("--no-") and \
            specs.get("--" + flag[5:], (None, None))[1] is bool
        if negated:
            spec = specs["--" + flag[5:]]
        if spec is None:
            what = f"no such option {flag}" if word.startswith("-") else \
                f"unexpected argument {word!r}"
            raise _usage_error(f"{what} for --family {family}; its options are: {valid} "
                                   "(the generic ones are in starcli train --help).")
        name, kind, meta = spec
        if kind is bool:
            if eq:
                raise _usage_error(f"{flag} takes no value (use {flag} or --no-"
                                       f"{flag[2:]}).")
            out[name] = not negated
            continue
        if not eq:
            if i >= len(words):
                raise _usage_error(f"Option '{flag}' requires an argument.")
            inline = words[i]
            i += 1
        out[name] = _convert(flag, kind, meta, inline)
    return out


_METAVARS = {int: "INTEGER", float: "FLOAT", str: "TEXT"}


def _paper_preset(family: str) -> str:
    """The family's paper preset: `paper`, else the one named `<...>-paper`, else the first."""
    from starcli.config import presets_of

    names = list(presets_of(family))
    return "paper" if "paper" in names else next(
        (n for n in names if n.endswith("paper")), names[0])


def _family_help() -> str:
    """The help section listing each family's options (read from the config modules)."""
    from starcli.families import FAMILY_NAMES

    parts = []
    for name in FAMILY_NAMES:
        lines = [f"    Options of --family {name}:", ""]
        for flag, (_, kind, meta) in family_flags(name).items():
            shown = f"{flag}/--no-{flag[2:]}" if kind is bool else \
                f"{flag} {_METAVARS[kind]}"
            lines.append(f"      {shown}  {meta['help']}\n")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


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
        "--family", help="Model family: stargan-v1, stargan-v2 (K --domains, latent and "
                         "reference styles) or cyclegan (one pair of --domains). "
                         "[default: stargan-v1]", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="stargan-v1: paper (official hyper-parameters), demo (fast CPU "
                         "recipe) or tiny (tests); stargan-v2: v2-afhq, v2-celeba-hq, demo or "
                         "tiny; cyclegan: cyclegan-paper, demo or tiny. "
                         "[default: the family's paper preset]", show_default=False)] = None,
    iters: Annotated[int | None, typer.Option("--iters", min=1, help="Training iterations.",
                                              show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Images per batch (the paper used 16).",
        show_default=False)] = None,
    image_size: Annotated[int | None, typer.Option(
        "--image-size", min=4, help="Must match the prepared data (`starcli prepare --size`).",
        show_default=False)] = None,
    lr_decay_iters: Annotated[int | None, typer.Option(
        "--lr-decay-iters", min=0, help="Decay the learning rates linearly to 0 over the last "
                                        "N iterations.", show_default=False)] = None,
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

      starcli train --family cyclegan --dataset demo-celeba --domains Male --preset demo

      starcli train --family stargan-v2 --dataset afhq --domains all --preset v2-afhq

      starcli train --joint --datasets celeba,rafd --preset paper --device cuda

      starcli train --resume latest

      starcli train --dataset celeba --gpus 4 --batch-size 64

      torchrun --nproc_per_node 4 -m starcli train --dataset celeba --batch-size 64
    """
    from starcli.config import PRECISIONS, presets_of
    from starcli.errors import ConfigError
    from starcli.families import DEFAULT_FAMILY, FAMILY_NAMES

    _choice(family, FAMILY_NAMES, "--family")
    try:
        _choice(preset, tuple(presets_of(family or DEFAULT_FAMILY)), "--preset")
    except ConfigError as exc:  # an unknown family is caught just above
        raise typer.BadParameter(str(exc), param_hint="--preset") from None
    _choice(precision, PRECISIONS, "--precision")
    names: list[str] = []
    for value in list(dataset or []) + ([datasets] if datasets else []):
        names.extend(split_csv(value) or ())
    overrides = dict(
        datasets=tuple(names) or None, joint=joint or None, mix=split_numbers(mix, "--mix", float),
        iters=iters, batch_size=batch_size, image_size=image_size,
        lr_decay_iters=lr_decay_iters,
        precision=precision, channels_last=channels_last, compile=compile_, device=device,
        workers=workers, seed=seed, run_dir=run_dir, sample_every=sample_every,
        save_every=save_every, log_every=log_every, keep_last=keep,
        home=str(home) if home is not None else None, dist_timeout=dist_timeout,
    )
    from starcli.config import TrainConfig
    from starcli.engine import check_launch, describe_run, launch_local, resume_config
    from starcli.engine import train as run_train

    words = list(ctx.args)
    if resume is not None:
        # The family's flags are those of the resumed run's family unless --family is given.
        chosen = family or (resume_config(resume).family if words else DEFAULT_FAMILY)
        overrides.update(parse_family_flags(words, chosen))
        cfg = resume_config(resume, preset=preset, family=family, **overrides)
    else:
        overrides.update(parse_family_flags(words, family or DEFAULT_FAMILY))
        cfg = TrainConfig.from_preset(preset or _paper_preset(family or DEFAULT_FAMILY),
                                      family=family, **overrides)
    if gpus is not None and gpus > 1 and not dry_run:
        code = launch_local(gpus, cfg, _forwarded_args(ctx, drop=("gpus",)) + words)
        if code:
            console.print(f"[bold red]Error:[/] training in {gpus} processes failed (exit "
                          f"{code}); the failing rank's error is above.", soft_wrap=True)
        raise typer.Exit(code)
    is_main = int(os.environ.get("RANK", "0") or 0) == 0
    if cfg.batch_size < getattr(cfg.options, "WARN_BATCH_BELOW", 8) and is_main:
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


# Family flags are words click does not know: it leaves them in ctx.args for
# parse_family_flags (cli.py reads these settings when it builds the command).
train.context_settings = {"allow_extra_args": True, "ignore_unknown_options": True}
train.__doc__ = (train.__doc__ or "").rstrip() + "\n\n" + _family_help()
