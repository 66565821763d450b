"""`starcli demo`: fetch, prepare, train, translate and eval on built-in synthetic faces."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from starcli.commands._common import (
    HomeOpt,
    JsonOpt,
    RichProgress,
    cli_errors,
    console,
    emit_json,
)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


@cli_errors
def demo(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for the run, the translated faces and the report.",
        file_okay=False)] = Path("demo-out"),
    quick: Annotated[bool, typer.Option(
        "--quick", help="A smoke-test budget (under a minute): every step runs, but the "
                        "model is not trained long enough to learn.")] = False,
    iters: Annotated[int | None, typer.Option(
        "--iters", min=1, help="Training iterations (default: the demo preset's).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Training seed.")] = 0,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0, help="Processes for drawing and preparing the faces "
                                 "[default: up to 4].", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
                      ] = "auto",
    family: Annotated[str, typer.Option(
        "--family", help="stargan-v1 (one joint model over demo-celeba and demo-rafd) or "
                         "stargan-v2 (female/male with latent and reference styles).")
    ] = "stargan-v1",
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the whole chain on built-in synthetic faces: no download, no GPU needed.

    Draws the demo-celeba and demo-rafd faces, prepares them, trains one joint model
    (--preset demo, a few minutes on 2 CPU cores), translates held-out faces and measures
    the result. Each step prints the starcli command that repeats it by hand.
    Data goes to --home; the run, translations and report to --out.

    Examples:

      starcli demo

      starcli demo --out /tmp/demo --home /tmp/starcli-data

      starcli demo --family stargan-v2
    """
    from rich.markup import escape

    from starcli.demo import DemoConfig, quick_config, run_demo

    cfg = DemoConfig(home=home, out=out, iters=iters, seed=seed, workers=workers,
                     device=device, family=family)
    if quick:
        cfg = quick_config(cfg)

    def on_step(step: Any) -> None:
        console.print(f"\n[bold cyan][{step.number}/{step.total}][/] [bold]{step.title}[/]")
        if step.command:
            console.print(f"  [dim]$[/] {escape(step.command)}", soft_wrap=True,
                          highlight=False)

    with RichProgress() as progress:
        result = run_demo(cfg, progress=progress, on_step=on_step)
    _print_result(result)
    if json_out:
        emit_json(result)


# The demo's bars (issue 14): mean over targets on held-out faces.
_BARS = (("success", "success", ">=", 0.90), ("retention", "retention", ">=", 0.95),
         ("identity_l1", "identity L1 (whole)", "<=", 0.15),
         ("identity_l1_frame_no_male", "identity L1 (frame, Male flips apart)", "<=", 0.08))


# StarGAN v2's demo bars (issue 15), on held-out faces.
_V2_BARS = (("latent_success", "latent success", ">=", 0.90),
            ("reference_success", "reference success", ">=", 0.90))


def _print_v2_result(result: dict[str, Any]) -> None:
    from rich.table import Table

    st = result.get("styles") or {}
    table = Table(title="StarGAN v2 on held-out test faces", title_justify="left")
    for name, justify in (("guidance", "left"), ("domain", "left"), ("success", "right")):
        table.add_column(name, justify=justify)
    for mode in ("latent", "reference"):
        part = st.get(mode) or {}
        for domain, value in (part.get("per_domain") or {}).items():
            table.add_row(mode, f"→ {domain}", _pct(value))
        table.add_row(f"[bold]{mode}[/]", "[bold]all[/]", f"[bold]{_pct(part.get('success'))}[/]",
                      end_section=True)
    console.print()
    console.print(table)
    lat, ref = st.get("latent") or {}, st.get("reference") or {}
    lines = [f"latent diversity: mean pairwise L1 {_num(lat.get('diversity_l1'))} between "
             f"one face's {st.get('styles')} styles"]
    for group, value in (lat.get("distinct") or {}).items():
        lines.append(f"distinct {group.replace('+', '/')} among them: {value:.2f}"
                     if value is not None else f"distinct {group}: –")
    for group, value in (ref.get("style_match") or {}).items():
        lines.append(f"reference-guided outputs with the reference's {group.replace('+', '/')}"
                     f": {_pct(value)}")
    lines.append(f"identity L1 of reference-guided outputs: {_num(ref.get('identity_l1'))} "
                 f"whole, {_num(ref.get('identity_l1_frame'))} frame (pose and background "
                 "are the source's)")
    for line in lines:
        console.print(line, soft_wrap=True)
    figures = result["summary"].get("figures") or {}
    parts = []
    for key, label, op, bar in _V2_BARS:
        value = figures.get(key)
        if value is not None:
            ok = value >= bar if op == ">=" else value <= bar
            parts.append(f"{'[green]✓[/]' if ok else '[red]✗[/]'} {label} {_pct(value)} "
                         f"(bar {op} {bar:g})")
    if parts:
        console.print("; ".join(parts), soft_wrap=True)
    if not result.get("full_budget"):
        console.print("[yellow]Reduced budget:[/] these numbers say the chain runs, not how "
                      "well the demo recipe learns.")
    train = result["train"]
    console.print(f"\n[green]✓[/] demo finished in {result['seconds']:.0f}s "
                  f"(training {train['seconds']:.0f}s, {train['step']:,} iterations, "
                  f"{train['device']}, {train['precision']})")
    tr = result["translate"]
    if tr.get("grid"):
        console.print(f"  look at this:     {tr['grid']} (raw test files and their latent "
                      "styles per domain)")
    if tr.get("reference_matrix"):
        console.print(f"  and this:         {tr['reference_matrix']} (sources across, "
                      "references down)")
    console.print(f"  report:           {result['report']['markdown']}")


def _print_result(result: dict[str, Any]) -> None:
    if result.get("family") == "stargan-v2":
        _print_v2_result(result)
        return
    from rich.table import Table

    table = Table(title="Results on held-out test faces", title_justify="left")
    columns = (("dataset", "left"), ("target", "left"), ("success", "right"),
               ("retention", "right"), ("L1", "right"), ("L1 frame", "right"),
               ("cycle L1", "right"))
    for name, justify in columns:
        table.add_column(name, justify=justify)

    def cells(row: dict[str, Any]) -> list[str]:
        cycle = row.get("cycle_l1", row.get("reconstruction_l1"))
        return [_pct(row.get("success")), _pct(row.get("retention")),
                _num(row.get("identity_l1")), _num(row.get("identity_l1_frame")), _num(cycle)]

    for sec in result["datasets"]:
        for row in sec["targets"]:
            table.add_row(sec["dataset"], row["target"], *cells(row))
        table.add_row(sec["dataset"], "[bold]mean[/]", *cells(sec["mean"]), end_section=True)
    s = result["summary"]
    table.add_row("[bold]all[/]", f"[bold]mean of {s['targets']} targets[/]",
                  *(f"[bold]{c}[/]" for c in cells(s)))
    console.print()
    console.print(table)
    console.print("success: share of faces that did not carry the target before and do after "
                  "translation, as judged by a classifier trained on real faces; retention: "
                  "share whose other labels still read the same; L1: mean |x − G(x, target)| "
                  "over the whole image and its outer eighth (frame); cycle L1: "
                  "|x − G(G(x, target), own labels)|; pixels in [−1, 1].")
    figures = s.get("figures") or {}
    if figures:
        parts = []
        for key, label, op, bar in _BARS:
            value = figures.get(key)
            if value is None:
                continue
            ok = value >= bar if op == ">=" else value <= bar
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            shown = _pct(value) if key in ("success", "retention") else _num(value)
            parts.append(f"{mark} {label} {shown} (bar {op} {bar:g})")
        if figures.get("identity_l1_frame_male") is not None:
            parts.append(f"Male flips' frame L1 {_num(figures['identity_l1_frame_male'])}")
        if figures.get("transfer") is not None:
            parts.append(f"CelebA→RaFD transfer {_pct(figures['transfer'])} (aim >= 0.8)")
        console.print("; ".join(parts), soft_wrap=True)
    if not result.get("full_budget"):
        console.print("[yellow]Reduced budget:[/] these numbers say the chain runs, not how "
                      "well the demo recipe learns.")
    for t in result["translate"]["targets"]:
        if t["spec"] == "Smiling":
            why = t["note"] or ("Smiling is one of the model's own demo-celeba labels; the "
                                "registry alias rafd:happy is only used by models without it")
            console.print(f"--to Smiling resolved to {t['labels']} ({why}).")
    train = result["train"]
    console.print(f"\n[green]✓[/] demo finished in {result['seconds']:.0f}s "
                  f"(training {train['seconds']:.0f}s, {train['step']:,} iterations, "
                  f"{train['device']}, {train['precision']})")
    if train.get("samples"):
        console.print(f"  training samples: {train['samples']}")
    if result["translate"].get("grid"):
        console.print(f"  look at this:     {result['translate']['grid']} (raw test files, the "
                      "model's input and every target, side by side)")
    console.print(f"  translations:     {result['translate']['out']}/<target>/ (per-face strips "
                  f"in {result['translate']['grids']})")
    report = result["report"]
    for path in (report.get("samples") or {}).values():
        console.print(f"  eval samples:     {path}")
    if report.get("chart"):
        console.print(f"  accuracy chart:   {report['chart']}")
    console.print(f"  report:           {report['markdown']}")
