"""`starcli eval`: classification accuracy, reconstruction and FID of a checkpoint (and the
StarGAN v2 protocol's FID and LPIPS for style-based ones), with a report;
`starcli eval train-classifier`: the accuracy metric's classifier on its own."""

from __future__ import annotations

import sys
from dataclasses import replace
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
    split_csv,
)
from starcli.formatting import classification_error_sentence, num, pct

app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _names(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for value in values or []:
        out.extend(split_csv(value) or ())
    return tuple(out)


@app.callback()
@cli_errors
def eval_(
    ctx: typer.Context,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", "-c", help="Run directory, checkpoint directory (or a file in one), or "
                                   "a fetched pretrained name. Default: runs/latest.",
        show_default=False)] = None,
    dataset: Annotated[list[str] | None, typer.Option(
        "--dataset", "-d", help="Prepared dataset(s) to evaluate, each matched to the label "
                                "space with the same labels (default: the checkpoint's own "
                                "datasets). Repeat or comma-separate.",
        show_default=False)] = None,
    compare: Annotated[list[Path] | None, typer.Option(
        "--compare", help="Evaluate these checkpoints (repeat: --compare A --compare B) with "
                          "the same faces, targets and seed, and write one table "
                          "(compare.md/json/html in --out, default ./compare).",
        show_default=False)] = None,
    split: Annotated[str, typer.Option("--split", help="Split of real images to translate "
                                                       "(train, valid or test).")] = "test",
    metrics: Annotated[str, typer.Option(
        "--metrics", help="Comma-separated: accuracy, reconstruction, fid, and for StarGAN "
                          "v2 checkpoints fid_v2, lpips (the paper's protocol).")
    ] = "accuracy,reconstruction,fid",
    num_images: Annotated[int | None, typer.Option(
        "--num-images", "-n", min=1, help="Use at most N images per dataset (default: all).",
        show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Report folder (default: <run dir>/eval).", file_okay=False,
        show_default=False)] = None,
    inception_weights: Annotated[Path | None, typer.Option(
        "--inception-weights", help="Inception-v3 state_dict for FID (pytorch-fid "
                                    "pt_inception-2015-12-05-*.pth or torchvision "
                                    "inception_v3_google-*.pth). Default: the torch hub cache.",
        exists=True, dir_okay=False, show_default=False)] = None,
    fid_backbone: Annotated[str, typer.Option(
        "--fid-backbone", help="fid_v2's Inception: torchvision (the StarGAN v2 protocol's "
                               "ImageNet weights) or tf-inception (the TF FID network of "
                               "pytorch-fid, the literature's).")] = "torchvision",
    lpips_weights: Annotated[Path | None, typer.Option(
        "--lpips-weights", help="LPIPS v0.1 linear weights (default: the lpips package's "
                                "weights/v0.1/alex.pth).", exists=True, dir_okay=False,
        show_default=False)] = None,
    alexnet_weights: Annotated[Path | None, typer.Option(
        "--alexnet-weights", help="torchvision AlexNet state_dict for LPIPS "
                                  "(alexnet-owt-7be5be79.pth; default: the torch hub cache).",
        exists=True, dir_okay=False, show_default=False)] = None,
    seeds: Annotated[int, typer.Option(
        "--seeds", min=1, help="fid_v2/lpips: repeat the generation with N seeds (--seed, "
                               "--seed+1, ...) and report mean ± std.")] = 1,
    outputs_per_input: Annotated[int, typer.Option(
        "--outputs-per-input", min=1, help="fid_v2/lpips: outputs per test image and "
                                           "task.")] = 10,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", min=1, help="Images per model call (fid_v2/lpips: the source "
                                          "and reference batch, 32 in the paper).")] = 32,
    classifier_epochs: Annotated[int | None, typer.Option(
        "--classifier-epochs", min=1, help="Epochs for a classifier trained by this run "
                                           "(default: automatic).", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the classifier training (and "
                                                     "of the v2 protocol's first run).")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
                      ] = "auto",
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32, or bf16 for faster translation (numbers shift "
                            "slightly).")] = "fp32",
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure a checkpoint on held-out real images and write a report.

    Test images are translated to every target the checkpoint knows, then
    judged by a classifier trained on the real train split (cached in
    <home>/classifiers/). success: share of faces without the target before
    that carry it after; ceiling: the classifier's accuracy on real images;
    retention: faces whose labels that were not targeted still read the same.
    Also identity L1 |x - G(x, c)| (whole image and outer frame), cycle L1,
    transfer to RaFD expressions for joint models, and FID when Inception
    weights are available.
    Writes report.json, report.md, sample grids and an accuracy chart.
    StarGAN v2 checkpoints: --metrics fid_v2,lpips runs the paper's protocol
    (10 latent and 10 reference outputs per test image and domain pair, FID
    against the target's train images, LPIPS diversity).

    Examples:

      starcli eval

      starcli eval -c runs/joint-20240101-120000 -n 500 --metrics accuracy

      starcli eval -c pretrained-celeba-128 -d celeba --inception-weights pt.pth

      starcli eval -c runs/v2-afhq --metrics fid_v2,lpips --seeds 10
    """
    if ctx.invoked_subcommand is not None:
        return
    from starcli.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(
        checkpoint=Path(checkpoint).expanduser() if checkpoint else None, home=home,
        datasets=_names(dataset), split=split, metrics=split_csv(metrics) or (),
        num_images=num_images, out=out.expanduser() if out else None,
        inception_weights=inception_weights, batch_size=batch_size, seed=seed, device=device,
        precision=precision.lower(), classifier_epochs=classifier_epochs,
        fid_backbone=fid_backbone.lower(), lpips_weights=lpips_weights,
        alexnet_weights=alexnet_weights, seeds=seeds, outputs_per_input=outputs_per_input,
        command=("starcli", *sys.argv[1:]))
    if compare:
        from starcli.compare import compare as run_compare

        if checkpoint:
            raise typer.BadParameter("pass the checkpoints to --compare only (not also "
                                     "--checkpoint).", param_hint="--compare")
        if cfg.out is None:
            cfg = replace(cfg, out=Path("compare"))
        with RichProgress() as progress:
            result = run_compare(cfg, [p.expanduser() for p in compare], progress=progress)
        _print_compare(result)
        if json_out:
            emit_json(result)
        return
    with RichProgress() as progress:
        report = evaluate(cfg, progress=progress)
    _print_report(report)
    if json_out:
        emit_json(_summary(report))


def _print_compare(result: dict[str, Any]) -> None:
    from rich.table import Table

    from starcli.compare import _rows

    figures, targets = _rows(result)
    for title, rows in (("Headline figures", figures), ("Success per target", targets)):
        table = Table(title=title, title_justify="left")
        table.add_column("")
        for r in result["runs"]:
            table.add_column(f"{r['name']}\nstep {r['step']:,}", justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    files = result["files"]
    console.print(f"[green]✓[/] comparison: {files['markdown']} and {files['html']}")


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """What --json prints: the summary, one row per target, and the files."""
    targets = [{"dataset": sec["dataset"], **row}
               for sec in report["datasets"] for row in sec["targets"]]
    datasets = [{k: sec.get(k) for k in ("dataset", "kind", "images", "mean",
                                         "classification_error", "retention_note")}
                for sec in report["datasets"]]
    return {"checkpoint": report["checkpoint"], "step": report["step"],
            "split": report["split"], "summary": report["summary"], "datasets": datasets,
            "targets": targets, "transfer": report.get("transfer"), "fid": report.get("fid"),
            "v2_protocol": _v2_brief(report.get("v2_protocol")),
            "files": report["files"], "out": report["out"]}


def _v2_brief(v2: dict[str, Any] | None) -> dict[str, Any] | None:
    """The protocol's figures without the per-seed detail."""
    if v2 is None:
        return None
    return {k: v for k, v in v2.items() if k not in ("per_seed", "notes")}


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    joint = len(report["datasets"]) > 1
    table = Table(title=f"eval: step {report['step']} ({report['split']} split)",
                  title_justify="left")
    if joint:
        table.add_column("dataset")
    # Label names are never cut (they are what a reader looks up); narrow terminals wrap the
    # numeric headers instead.
    # (identity L1 whole / frame, cycle L1; the legend below the table names them in full)
    with_fid = any(r.get("fid") is not None for sec in report["datasets"]
                   for r in sec["targets"])
    table.add_column("target", no_wrap=True)
    for name in ("success", "acc.", "ceiling", "retain", "id L1", "frame", "cycle",
                 *(("FID",) if with_fid else ())):
        table.add_column(name, justify="right")

    def cells(r: dict[str, Any]) -> list[str]:
        out = [pct(r["success"]), pct(r["accuracy"]), pct(r["ceiling"]),
               pct(r.get("retention")), num(r.get("identity_l1")),
               num(r.get("identity_l1_frame")),
               num(r.get("cycle_l1", r.get("reconstruction_l1")))]
        return out + ([num(r["fid"], 2)] if with_fid else [])

    for sec in report["datasets"]:
        for row in sec["targets"]:
            table.add_row(*([sec["dataset"]] if joint else []), row["target"], *cells(row))
        table.add_row(*([sec["dataset"]] if joint else []), "[bold]mean[/]",
                      *cells(sec["mean"]), end_section=True)
    console.print(table)
    console.print("acc.: accuracy over all faces; retain: faces whose labels that were not "
                  "targeted read the same; id L1 / frame: mean |x - G(x, c)| over the image / "
                  "its outer eighth; cycle: cycle L1.", style="dim")
    for t in report.get("transfer") or []:
        per = ", ".join(f"{r['target']} {pct(r['success'])}" for r in t["targets"])
        console.print(f"transfer {t['source']} → {t['target_space']}: mean "
                      f"{pct(t['mean'])} ({per})")
    s = report["summary"]
    parts = []
    if s.get("success") is not None:
        parts += [f"success {pct(s['success'])} (faces that did not carry the target before)",
                  f"accuracy {pct(s['accuracy'])}",
                  f"classifier on real images {pct(s['ceiling'])}"]
    if s.get("retention") is not None:
        parts.append(f"retention {pct(s['retention'])}")
    if s.get("identity_l1") is not None:
        parts.append(f"identity L1 {num(s['identity_l1'])} (frame "
                     f"{num(s.get('identity_l1_frame_no_male'))} without Male flips, "
                     f"{num(s.get('identity_l1_frame_male'))} Male flips)")
    cycle = s.get("cycle_l1", s.get("reconstruction_l1"))
    if cycle is not None:
        parts.append(f"cycle L1 {num(cycle)}")
    if s.get("transfer") is not None:
        parts.append(f"transfer {pct(s['transfer'])}")
    if s.get("fid") is not None:
        parts.append(f"FID {num(s['fid'], 2)}")
    if parts:
        console.print("Mean over targets: " + ", ".join(parts))
    for sec in report["datasets"]:
        err = sec.get("classification_error")
        if err:
            console.print(f"{sec['dataset']}: {classification_error_sentence(err)}")
    v2 = report.get("v2_protocol")
    if v2 is not None:
        from starcli.eval_v2 import markdown_lines

        for line in markdown_lines(v2):
            if line:
                console.print(line.lstrip("#> ").replace("→", "->"), markup=False)
    files = report["files"]
    console.print(f"[green]✓[/] report: {files['markdown']}")
    if files.get("html"):
        console.print(f"  page:   {files['html']} (open it in a browser)")
    for path in files["samples"].values():
        console.print(f"  samples: {path}")
    if files.get("chart"):
        console.print(f"  chart: {files['chart']}")


@app.command("train-classifier")
@cli_errors
def train_classifier(
    names: Annotated[list[str], typer.Argument(
        help="Prepared dataset(s) to train the eval classifier on.", show_default=False)],
    size: Annotated[int | None, typer.Option(
        "--size", help="Image size of the prepared data (default: the only one prepared).",
        show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help="Training epochs (default: automatic).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if a matching "
                                                        "classifier is cached.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
                      ] = "auto",
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train (or reuse) the classifier that `starcli eval` uses as its judge.

    It learns every label of the dataset's label table from the real train
    split (on the synthetic sets also the rendered labels that were not
    selected, for eval's retention) and is cached in <home>/classifiers/,
    keyed by the data's checksums.

    Examples:

      starcli eval train-classifier demo-celeba demo-rafd

      starcli eval train-classifier celeba --size 128 --epochs 3 --device cuda
    """
    from starcli.classifier import find_cached, judge_view, load_classifier, rendered_columns
    from starcli.classifier import train_classifier as run_train
    from starcli.data.dataset import open_prepared
    from starcli.paths import resolve_home

    root = resolve_home(home)
    results = []
    with RichProgress() as progress:
        for name in _names(names):
            # The judge eval trains: every label the shards hold that the images show.
            prepared = open_prepared(root, name, size)
            prepared = judge_view(prepared, rendered_columns(prepared, root))
            cached = not force and find_cached(prepared, epochs=epochs, seed=seed,
                                               home=root) is not None
            path = run_train(prepared, epochs=epochs, seed=seed, home=root, device=device,
                             force=force, progress=progress)
            meta = load_classifier(path, "cpu").meta
            results.append({"dataset": name, "path": str(path), "reused": cached,
                            "epochs": meta.get("epochs"), "holdout": meta.get("holdout"),
                            "seconds": meta.get("seconds")})
    for r in results:
        holdout = r["holdout"] or {}
        verb = "reused" if r["reused"] else "trained"
        console.print(f"[green]✓[/] {r['dataset']}: {verb} ({r['epochs']} epochs), "
                      f"{holdout.get('split', 'holdout')} accuracy "
                      f"{pct(holdout.get('accuracy'))}")
        console.print(f"  {r['path']}")
    if json_out:
        emit_json({"classifiers": results})
