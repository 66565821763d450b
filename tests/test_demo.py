"""`starcli demo`: the whole chain end to end on a reduced budget, and its guard rails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starcli.cli import app
from starcli.demo import MARKER, DemoConfig, quick_config, run_demo
from starcli.errors import StarcliError, UsageError


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
def test_demo_quick_runs_every_step(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "demo-out"
    steps = []
    cfg = DemoConfig.quick(home=home, out=out, workers=0)
    result = run_demo(cfg, on_step=steps.append)

    # Every step was announced, with a command a user can paste (all but the face export).
    assert [s.number for s in steps] == list(range(1, 8))
    commands = [s.command for s in steps if s.command]
    assert [c.split()[1] for c in commands] == ["fetch", "prepare", "prepare", "train",
                                                "translate", "eval"]
    assert "--joint --datasets demo-celeba,demo-rafd --preset demo" in commands[3]
    assert "--to Smiling" in commands[4]

    run = out / "run"
    assert (run / "config.json").is_file()
    assert list((run / "checkpoints").glob("step-*/G.safetensors"))
    assert result["train"]["step"] == cfg.iters
    samples = Path(result["train"]["samples"])
    assert samples.is_file() and samples.suffix == ".png"

    faces = sorted((out / "faces").rglob("*.jpg"))
    assert len(faces) == 2 * cfg.faces
    # Every face was translated to every target, and the grids exist.
    slugs = [t["slug"] for t in result["translate"]["targets"]]
    assert len(slugs) == 5
    for slug in slugs:
        assert len(list((out / "translated" / slug).rglob("*.png"))) == len(faces)
    assert len(list((out / "translated" / "_grid").rglob("*.png"))) == len(faces)
    # The faces are the raw test files as drawn (not prepared crops), each framed by the
    # recipe of its dataset; one labelled contact sheet shows them all at a visible size.
    from PIL import Image

    sizes = {Image.open(p).size for p in faces}
    assert sizes == {(178, 218), (256, 320)}
    rows = [json.loads(line) for line in
            Path(result["translate"]["manifest"]).read_text().splitlines()]
    framed = {Path(r["input"]).parent.name: r["framing"] for r in rows}
    assert framed["demo-celeba"].startswith("demo-celeba: centre 150px square of 178x218")
    assert framed["demo-rafd"].startswith("demo-rafd: centre 200px square of 256x320")
    sheet = Image.open(result["translate"]["grid"])
    assert sheet.height >= len(faces) * 128
    assert len(result["translate"]["grid_files"]) == len(faces)
    smiling = next(t for t in result["translate"]["targets"] if t["spec"] == "Smiling")
    assert smiling["labels"] == "demo-celeba:Smiling"  # a selected CelebA attribute wins

    report = out / "report"
    assert (report / "report.json").is_file() and (report / "report.md").is_file()
    grids = sorted(report.glob("samples-*.png"))
    assert [p.name for p in grids] == ["samples-demo-celeba.png", "samples-demo-rafd.png"]
    assert (report / "accuracy.png").is_file()

    summary = result["summary"]
    assert _finite(summary["success"]) and 0.0 <= summary["success"] <= 1.0
    assert _finite(summary["reconstruction_l1"]) and summary["reconstruction_l1"] >= 0.0
    targets = [r for d in result["datasets"] for r in d["targets"]]
    assert len(targets) == summary["targets"] == 18  # 4 hair + 3 labels x 2 ways + 8 moods
    assert all(_finite(r["reconstruction_l1"]) for r in targets)
    assert json.loads((out / "demo.json").read_text())["summary"] == summary
    assert result["full_budget"] is False

    # A second run into the same folder replaces the demo's outputs and reuses the data.
    again = run_demo(quick_config(DemoConfig(home=home, out=out, workers=0, iters=2)))
    assert again["train"]["step"] == 2
    assert again["data"]["fetched"]["parts"][0]["skipped"] is True


def test_demo_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="did not write"):
        run_demo(DemoConfig.quick(home=tmp_path / "home", out=out))
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / MARKER).exists()


def test_demo_config_rejects_bad_budgets() -> None:
    with pytest.raises(UsageError, match="--iters"):
        DemoConfig(iters=0)
    with pytest.raises(UsageError, match="subjects"):
        DemoConfig(subjects=1)
    assert DemoConfig().is_full and not DemoConfig.quick().is_full
    assert quick_config(DemoConfig(iters=5)).iters == 5


def test_demo_command_reports_usage_errors(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("x")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out),
                                      "--home", str(home)])
    assert result.exit_code == 2
    assert "did not write" in result.output


def test_an_interrupted_training_stops_the_demo(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C/SIGTERM make train save and return; the demo must not go on to measure it."""
    import starcli.engine
    import starcli.translate

    def interrupted(cfg, **kw):
        return {"interrupted": True, "step": 3, "iters": cfg.iters, "run_dir": str(tmp_path)}

    def never(*a, **k):
        raise AssertionError("translated a half-trained model")

    monkeypatch.setattr(starcli.engine, "train", interrupted)
    monkeypatch.setattr(starcli.translate, "translate", never)
    cfg = DemoConfig.quick(home=tmp_path / "home", out=tmp_path / "out", workers=0)
    with pytest.raises(StarcliError, match=r"stopped during training \(step 3 of"):
        run_demo(cfg)


@pytest.mark.slow
def test_demo_stargan_v2_quick_runs_latent_and_reference_steps(tmp_path: Path) -> None:
    """`starcli demo --family stargan-v2 --quick`: every step, the latent styles, the
    references sorted by domain, the reference matrix, and eval's style figures."""
    from PIL import Image

    from starcli.demo import V2_REFS, V2_STYLES

    home, out = tmp_path / "home", tmp_path / "v2"
    steps = []
    cfg = DemoConfig.quick(home=home, out=out, workers=0, family="stargan-v2", iters=4)
    result = run_demo(cfg, on_step=steps.append)
    commands = [s.command for s in steps if s.command]
    assert [c.split()[1] for c in commands] == ["fetch", "prepare", "train", "translate",
                                                "eval"]
    assert "--family stargan-v2 --dataset demo-celeba --domains Male" in commands[2]
    faces = sorted((out / "faces").rglob("*.jpg"))
    assert len(faces) == cfg.faces and {Image.open(p).size for p in faces} == {(178, 218)}
    refs = sorted(p.relative_to(out / "refs").parts[0] for p in (out / "refs").rglob("*.jpg"))
    assert refs == ["female"] * V2_REFS + ["male"] * V2_REFS
    # Latent: one file per face, domain and style.
    styled = sorted((out / "translated").glob("Male*/*/*.png"))  # female: Male=0, male: Male
    assert len(styled) == cfg.faces * 2 * V2_STYLES
    # References: one folder per reference, each with every face.
    assert len(list((out / "referenced" / "ref").glob("*/*/*.png"))) == cfg.faces * 2 * V2_REFS
    assert Path(result["translate"]["reference_matrix"]).is_file()
    assert Path(result["translate"]["grid"]).is_file()
    st = result["styles"]
    assert st["domains"] == ["female", "male"]
    assert set(st["latent"]["per_domain"]) == {"female", "male"}
    assert st["latent"]["success"] == pytest.approx(
        sum(st["latent"]["per_domain"].values()) / 2)
    assert json.loads((out / "demo.json").read_text())["family"] == "stargan-v2"

    # The CLI prints the v2 table and names both pictures.
    res = CliRunner().invoke(app, ["demo", "--family", "stargan-v2", "--quick", "--iters",
                                   "2", "--out", str(out), "--home", str(home)])
    assert res.exit_code == 0, res.output
    assert "latent" in res.output and "reference-matrix.png" in res.output
