"""`starcli translate` with a StarGAN v2 checkpoint: latent styles, truncation, references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from starcli.cli import app
from starcli.errors import UsageError
from starcli.translate import GRID_DIR, TranslateConfig, _style_z, translate

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture
def v2(tiny_v2):
    return tiny_v2


def _faces(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"f{i}.png")
    return folder


def _run(v2, tmp_path, **kw):
    home, ckpt = v2
    kw.setdefault("out", tmp_path / "out")
    return translate(TranslateConfig(inputs=(_faces(tmp_path / "in"),), checkpoint=ckpt,
                                     device="cpu", precision="fp32", home=home, **kw))


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_styles_give_one_file_per_style_seeded_and_shared_across_inputs(v2, tmp_path):
    from starcli.checkpoint import load_checkpoint
    from starcli.families import get_family

    result = _run(v2, tmp_path, targets=("male",), styles=3, seed=7)
    out = tmp_path / "out"
    files = sorted(p.relative_to(out).as_posix() for p in (out / "Male").glob("*.png"))
    assert files == [f"Male/f{i}-s{k:02d}.png" for i in range(3) for k in range(3)]
    assert result.written == 9
    # Different styles give different pictures of one input.
    a, b = _png(out / "Male" / "f0-s00.png"), _png(out / "Male" / "f0-s01.png")
    assert np.abs(a - b).mean() > 0
    # Style k is G(x, F(z_k, male)) with z_k from the seed alone: recompute one by hand.
    ckpt = load_checkpoint(v2[1], device=torch.device("cpu"))
    model = get_family(ckpt.family).translator(ckpt, torch.device("cpu"), "fp32")
    x = model.to_input(np.asarray(Image.open(tmp_path / "in" / "f2.png").convert("RGB"))[None])
    male = list(model.domain_names()).index("male")
    z = _style_z(7, 1, model.latent_dim)[None]
    want = model.to_uint8(model.generate_styled(x, model.latent_style(z, torch.tensor([male]))))
    assert np.abs(_png(out / "Male" / "f2-s01.png") - want[0]).max() <= 1
    # The same seed again: the outputs exist (resume); another seed: other pictures.
    again = _run(v2, tmp_path, targets=("male",), styles=3, seed=7)
    assert again.written == 0 and again.existing == 3
    other = _run(v2, tmp_path, targets=("male",), styles=1, seed=8, out=tmp_path / "o8")
    assert np.abs(_png(tmp_path / "o8" / "Male" / "f0.png") - a).mean() > 0
    rows = [json.loads(line) for line in result.manifest.read_text().splitlines()]
    assert sorted(rows[0]["outputs"]) == ["Male/s00", "Male/s01", "Male/s02"]
    assert other.translated == 3


def test_psi_zero_gives_the_domain_mean_style_for_every_style(v2, tmp_path):
    _run(v2, tmp_path, targets=("male",), styles=2, seed=0, psi=0.0)
    out = tmp_path / "out" / "Male"
    assert np.array_equal(_png(out / "f0-s00.png"), _png(out / "f0-s01.png"))


def test_references_set_style_and_domain_and_the_grid_is_the_paper_matrix(v2, tmp_path):
    refs = tmp_path / "refs"
    _faces(refs / "male", 2)
    _faces(refs / "female", 1)
    result = _run(v2, tmp_path, targets=(), refs=(refs,), grid=True)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "ref").iterdir()) == ["female_f0", "male_f0",
                                                               "male_f1"]
    assert result.written == 3 * 3 + 3  # 3 references x 3 inputs, and 3 grid strips
    # The matrix: a header row of sources and a row per reference, tiles >= 128 px.
    matrix = _png(out / GRID_DIR / "reference-matrix.png")
    assert matrix.shape[0] == 4 * 128 and matrix.shape[1] == 4 * 128
    # Same reference picture, other domain folder: another style code, another output.
    a = _png(out / "ref" / "male_f0" / "f1.png")
    b = _png(out / "ref" / "female_f0" / "f1.png")
    assert np.abs(a - b).mean() > 0


def test_style_options_are_refused_for_label_families_and_bad_refs(v2, tmp_path):
    with pytest.raises(UsageError, match="--ref-domain 'cat'"):
        _run(v2, tmp_path, targets=(), refs=(_faces(tmp_path / "r"),), ref_domain="cat")
    with pytest.raises(UsageError, match="drop --to"):
        TranslateConfig(inputs=(tmp_path,), targets=("male",), refs=(tmp_path,))
    home, ckpt = v2
    res = runner.invoke(app, ["translate", str(_faces(tmp_path / "x")), "-c", str(ckpt),
                              "--to", "male", "--styles", "0", "--home", str(home)])
    assert res.exit_code == 2 and "--styles" in res.output
    res = runner.invoke(app, ["translate", str(tmp_path / "x"), "-c", str(ckpt),
                              "--to", "male", "--styles", "2", "--psi", "0.5", "--seed", "1",
                              "--out", str(tmp_path / "cli"), "--home", str(home),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "cli" / "Male").glob("*-s01.png"))) == 3


def test_eval_reports_latent_and_reference_guidance_and_diversity(v2, tmp_path):
    from starcli.evaluate import EvalConfig, evaluate

    home, ckpt = v2
    report = evaluate(EvalConfig(checkpoint=ckpt, home=home, metrics=("accuracy",),
                                 num_images=24, classifier_epochs=1, styles=3, device="cpu",
                                 out=tmp_path / "report"))
    st = report["summary"]["styles"]["demo-celeba"]
    assert st["styles"] == 3 and st["domains"] == ["female", "male"]
    for mode in ("latent", "reference"):
        assert 0.0 <= st[mode]["success"] <= 1.0
        assert set(st[mode]["per_domain"]) <= {"female", "male"}
    # Different z give different pictures: the tiny model is barely trained, not constant.
    assert st["latent"]["diversity_l1"] > 0
    groups = list(st["reference"]["style_match"])
    assert len(groups) == 1 and "Black_Hair" in groups[0]  # the hair colours, not Male
    assert 0 <= st["latent"]["distinct"][groups[0]] <= 3
    assert st["reference"]["identity_l1_frame"] is not None
    figures = report["summary"]["figures"]
    assert figures["latent_success"] == st["latent"]["success"]
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["summary"]["styles"]["demo-celeba"]["latent"]["success"] == \
        st["latent"]["success"]


def test_the_metric_registry_runs_what_a_checkpoint_allows():
    from starcli.evaluate import METRIC_REGISTRY, METRICS, applicable_metrics

    assert set(METRICS) == set(METRIC_REGISTRY)
    run, skipped = applicable_metrics(("accuracy", "reconstruction", "lpips"), has_styles=True)
    assert run == ("accuracy", "lpips") and "style encoder" in skipped["reconstruction"]
    run, skipped = applicable_metrics(("accuracy", "fid_v2"), has_styles=False)
    assert run == ("accuracy",) and "StarGAN v2" in skipped["fid_v2"]


def test_eval_draws_the_papers_latent_rows_and_reference_matrix(v2, tmp_path):
    from starcli.evaluate import EvalConfig, evaluate

    home, ckpt = v2
    report = evaluate(EvalConfig(checkpoint=ckpt, home=home, metrics=("accuracy",),
                                 num_images=16, classifier_epochs=1, styles=2, device="cpu",
                                 out=tmp_path / "report"))
    files = report["files"]["style_samples"]["demo-celeba"]
    latent = np.asarray(Image.open(files["latent"]))
    matrix = np.asarray(Image.open(files["reference"]))
    k, s, pad = 4, 32, 2  # 32 px tiles enlarged 4x; 4 faces, 2 domains, 5 styles
    assert latent.shape[:2] == (k * (8 * (s + pad) + pad), k * (6 * (s + pad) + pad))
    assert matrix.shape[:2] == (k * (5 * (s + pad) + pad), k * (5 * (s + pad) + pad))
    assert (matrix[k * pad:k * (pad + s), k * pad:k * (pad + s)] == 255).all()  # blank corner
    page = (tmp_path / "report" / "report.html").read_text()
    assert "styles-reference-demo-celeba.png" in page
