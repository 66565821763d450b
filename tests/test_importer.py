"""Official StarGAN v1 weights → starcli checkpoints → translate, checked against an
independent functional forward of the official layout; `starcli fetch pretrained-*` over a
loopback server; unsafe pickles refused without running."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from starcli.checkpoint import load_checkpoint
from starcli.cli import app
from starcli.errors import CheckpointError, ConfigError, UsageError
from starcli.families.stargan_v1.importer import (
    OFFICIAL_ATTRS,
    import_stargan_v1,
    load_official_state,
)
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig
from starcli.families.stargan_v1.official import to_official_discriminator, to_official_generator
from starcli.translate import TranslateConfig, translate

SIZE = 32
CFG = ModelConfig(image_size=SIZE, c_dim=5, g_conv_dim=8, d_conv_dim=8, g_repeat_num=2,
                  d_repeat_num=3)


# --- the official networks, written directly against the official keys ----------------------

def official_g(sd, x, c):
    def inorm(t, name):  # official test mode: batch statistics, running stats unused
        return F.instance_norm(t, weight=sd[f"{name}.weight"], bias=sd[f"{name}.bias"])

    n, _, h, w = x.shape
    z = torch.cat([x, c.view(n, -1, 1, 1).expand(-1, -1, h, w)], dim=1)
    z = F.relu(inorm(F.conv2d(z, sd["main.0.weight"], padding=3), "main.1"))
    z = F.relu(inorm(F.conv2d(z, sd["main.3.weight"], stride=2, padding=1), "main.4"))
    z = F.relu(inorm(F.conv2d(z, sd["main.6.weight"], stride=2, padding=1), "main.7"))
    k = 9
    while f"main.{k}.main.0.weight" in sd:
        r = F.relu(inorm(F.conv2d(z, sd[f"main.{k}.main.0.weight"], padding=1),
                         f"main.{k}.main.1"))
        z = z + inorm(F.conv2d(r, sd[f"main.{k}.main.3.weight"], padding=1), f"main.{k}.main.4")
        k += 1
    for j in (k, k + 3):
        z = F.relu(inorm(F.conv_transpose2d(z, sd[f"main.{j}.weight"], stride=2, padding=1),
                         f"main.{j + 1}"))
    return torch.tanh(F.conv2d(z, sd[f"main.{k + 6}.weight"], padding=3))


def official_d_cls(sd, x):
    z, i = x, 0
    while f"main.{i}.weight" in sd:
        z = F.leaky_relu(F.conv2d(z, sd[f"main.{i}.weight"], sd[f"main.{i}.bias"], stride=2,
                                  padding=1), 0.01)
        i += 2
    return F.conv2d(z, sd["conv2.weight"]).view(x.shape[0], -1)


def official_files(folder: Path, cfg: ModelConfig = CFG, seed: int = 0,
                   step: int = 200000) -> tuple[Path, Path]:
    """Random weights saved the way the official code saves them (IN running stats too)."""
    torch.manual_seed(seed)
    G, D = Generator(cfg), Discriminator(cfg)
    with torch.no_grad():
        for p in list(G.parameters()) + list(D.parameters()):
            p.normal_(0.0, 0.2)
    g_sd = to_official_generator(G.state_dict())
    for key in g_sd:  # nonsense statistics: an importer that used them would be caught
        if key.endswith("running_mean"):
            g_sd[key] = torch.randn_like(g_sd[key]) * 3
        elif key.endswith("running_var"):
            g_sd[key] = torch.rand_like(g_sd[key]) * 5 + 0.5
    folder.mkdir(parents=True, exist_ok=True)
    g_path, d_path = folder / f"{step}-G.ckpt", folder / f"{step}-D.ckpt"
    torch.save(g_sd, g_path)
    torch.save(to_official_discriminator(D.state_dict()), d_path)
    return g_path, d_path


def _images(folder: Path, n: int = 3) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"face{i}.png")
        out.append(rgb)
    return out


def _x(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def _u8(y: torch.Tensor) -> np.ndarray:
    return ((y[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# --- import ------------------------------------------------------------------------------

def test_import_then_translate_equals_the_official_network(tmp_path):
    g_path, d_path = official_files(tmp_path / "official")
    ckpt_dir = import_stargan_v1(g_path, d_path, OFFICIAL_ATTRS, SIZE, tmp_path / "run")
    assert ckpt_dir.name == "step-00200000"
    loaded = load_checkpoint(ckpt_dir)
    space = loaded.layout.spaces[0]
    assert space.names == OFFICIAL_ATTRS and space.kind == "multilabel"
    assert space.exclusive_groups == (("Black_Hair", "Blond_Hair", "Brown_Hair"),)
    assert loaded.meta["imported"]["G"] == "200000-G.ckpt"

    images = _images(tmp_path / "in")
    # One target that fixes every label, one that keeps the rest from D's estimate.
    specs = ["Blond_Hair,Male=1,Young=0", "Young=flip"]
    result = translate(TranslateConfig(inputs=(tmp_path / "in",), targets=tuple(specs),
                                       checkpoint=tmp_path / "run", out=tmp_path / "out",
                                       precision="fp32"))
    assert result.translated == 3
    g_sd = torch.load(g_path, weights_only=True)
    d_sd = torch.load(d_path, weights_only=True)
    with torch.no_grad():
        for i, rgb in enumerate(images):
            x = _x(rgb)
            own = (official_d_cls(d_sd, x)[0] > 0).float()
            hair = own[:3].clone()
            if hair.sum() > 1:  # the layout's hair group: keep the most confident only
                logits = official_d_cls(d_sd, x)[0, :3]
                hair = torch.zeros(3)
                hair[logits.argmax()] = 1
            own[:3] = hair
            flipped = own.clone()
            flipped[4] = 1 - flipped[4]
            for slug, c in (("Blond_Hair+Male+Young=0", torch.tensor([0., 1, 0, 1, 0])),
                            ("Young=flip", flipped)):
                expected = _u8(official_g(g_sd, x, c[None]))
                got = np.array(Image.open(tmp_path / "out" / slug / f"face{i}.png"))
                assert np.abs(got.astype(int) - expected).max() <= 1, (slug, i)


def test_wrong_attribute_count_gives_a_readable_diff(tmp_path):
    g_path, d_path = official_files(tmp_path / "official")
    with pytest.raises(CheckpointError) as err:
        import_stargan_v1(g_path, d_path, OFFICIAL_ATTRS[:4], SIZE, tmp_path / "run")
    msg = str(err.value)
    assert "c_dim 5" in msg and "--attrs lists 4" in msg and "RuntimeError" not in msg


def test_wrong_image_size_names_the_right_one(tmp_path):
    g_path, d_path = official_files(tmp_path / "official")
    with pytest.raises(CheckpointError, match="--image-size 32"):
        import_stargan_v1(g_path, d_path, OFFICIAL_ATTRS, 64, tmp_path / "run")


def test_unknown_attribute_has_a_did_you_mean(tmp_path):
    g_path, _ = official_files(tmp_path / "official")
    with pytest.raises(ConfigError, match="Did you mean Blond_Hair"):
        import_stargan_v1(g_path, None, ("Black_Hair", "Blonde_Hair", "Brown_Hair", "Male",
                                         "Young"), SIZE, tmp_path / "run")


def test_rafd_expressions_import_as_one_hot(tmp_path):
    cfg = ModelConfig(image_size=SIZE, c_dim=8, g_conv_dim=8, d_conv_dim=8, g_repeat_num=1,
                      d_repeat_num=3)
    g_path, d_path = official_files(tmp_path / "official", cfg)
    expressions = ("angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad",
                   "surprised")
    ckpt_dir = import_stargan_v1(g_path, d_path, expressions, SIZE, tmp_path / "run")
    assert load_checkpoint(ckpt_dir).layout.spaces[0].kind == "onehot"


def test_without_discriminator_translate_needs_full_specs(tmp_path):
    g_path, _ = official_files(tmp_path / "official")
    ckpt_dir = import_stargan_v1(g_path, None, OFFICIAL_ATTRS, SIZE, tmp_path / "run")
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    assert meta["has_discriminator"] is False
    _images(tmp_path / "in", 1)
    base = dict(inputs=(tmp_path / "in",), checkpoint=tmp_path / "run", out=tmp_path / "out",
                precision="fp32")
    with pytest.raises(UsageError, match="no discriminator"):
        translate(TranslateConfig(targets=("Male=flip",), **base))
    assert translate(TranslateConfig(targets=("Black_Hair,Male=0,Young=1",), **base)
                     ).translated == 1


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "200000-G.ckpt"
    torch.save({"main.0.weight": torch.zeros(1), "x": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refusing to load .*unsafe pickle"):
        load_official_state(evil)
    with pytest.raises(CheckpointError, match="unsafe pickle"):
        import_stargan_v1(evil, None, OFFICIAL_ATTRS, SIZE, tmp_path / "run")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_junk_legacy_and_wrapped_files(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("<html>quota exceeded</html>")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_official_state(junk)
    legacy = tmp_path / "legacy.ckpt"  # torch < 1.6 files (the released ones) are not zips
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert load_official_state(legacy)["a"].tolist() == [1.0, 1.0]
    wrapped = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {"a": torch.ones(1)}}, wrapped)
    assert list(load_official_state(wrapped)) == ["a"]
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_state(tmp_path / "missing.ckpt")


def test_import_cli_end_to_end(tmp_path):
    g_path, d_path = official_files(tmp_path / "official")
    runner = CliRunner()
    res = runner.invoke(app, ["import", "stargan-v1", str(g_path), "-d", str(d_path),
                              "--image-size", str(SIZE), "--out", str(tmp_path / "run"),
                              "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(info["checkpoint"]).is_dir() and info["attrs"] == list(OFFICIAL_ATTRS)
    bad = runner.invoke(app, ["import", "stargan-v1", str(g_path), "--attrs", "Male,Young",
                              "--image-size", str(SIZE), "--out", str(tmp_path / "run2")])
    assert bad.exit_code == 1
    assert "c_dim 5" in bad.output and "Traceback" not in bad.output


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_import_refuses_a_folder_that_holds_a_run_unless_forced(tmp_path, monkeypatch):
    from starcli.checkpoint import list_checkpoints, save_checkpoint

    g_path, d_path = official_files(tmp_path / "official")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "celeba-1"
    meta = {"model": CFG.to_dict(), "labels": {}, "train": {}, "datasets": []}
    for step in (5000, 6000):  # a training run's checkpoints (and its config)
        save_checkpoint(run, step, {"G": Generator(CFG)}, meta, {"step": step}, keep_last=3)
    (run / "config.json").write_text("{}\n")
    os.symlink("celeba-1", tmp_path / "runs" / "latest")
    before = _tree(run)
    runner = CliRunner()
    args = ["import", "stargan-v1", str(g_path), "-d", str(d_path), "--image-size", str(SIZE)]
    res = runner.invoke(app, [*args, "--out", "runs/latest"])
    assert res.exit_code == 2, res.output
    assert "--out" in res.output and "--force" in res.output and "Traceback" not in res.output
    assert _tree(run) == before  # nothing pruned, nothing replaced

    # A run folder with a config but no checkpoint yet is another run's folder too.
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.json").write_text("{}\n")
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "fresh")]).exit_code == 2

    # A previous import of the same step is not replaced silently either.
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "imp")]).exit_code == 0
    first = _tree(tmp_path / "imp")
    again = runner.invoke(app, [*args, "--attrs", "Black_Hair,Blond_Hair,Brown_Hair,Male,"
                                "Smiling", "--out", str(tmp_path / "imp")])
    assert again.exit_code == 2 and _tree(tmp_path / "imp") == first

    # An empty folder is fine, and --force writes over a run as before.
    (tmp_path / "empty").mkdir()
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "empty")]).exit_code == 0
    forced = runner.invoke(app, [*args, "--out", "runs/latest", "--force"])
    assert forced.exit_code == 0, forced.output
    assert [p.name for p in list_checkpoints(run)] == ["step-00200000"]


# --- fetch pretrained-celeba-128 over loopback --------------------------------------------

@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _official_zip(path: Path, tmp: Path, with_g: bool = True) -> None:
    # The registry entry says 128 px: a narrow model at 128 px keeps the test fast.
    cfg = ModelConfig(image_size=128, c_dim=5, g_conv_dim=4, d_conv_dim=4, g_repeat_num=1,
                      d_repeat_num=6)
    g_path, d_path = official_files(tmp, cfg)
    with zipfile.ZipFile(path, "w") as zf:
        if with_g:
            zf.write(g_path, "stargan_celeba_128/models/200000-G.ckpt")
        zf.write(d_path, "stargan_celeba_128/models/200000-D.ckpt")


def test_fetch_pretrained_downloads_verifies_and_imports(tmp_path, home, server):
    root, url = server
    _official_zip(root / "celeba-128x128-5attrs.zip", tmp_path / "src")
    runner = CliRunner()
    res = runner.invoke(app, ["fetch", "pretrained-celeba-128", "--mirror", url,
                              "--home", str(home)])
    assert res.exit_code == 0, res.output
    ckpt_dir = home / "pretrained" / "pretrained-celeba-128" / "checkpoints" / "step-00200000"
    loaded = load_checkpoint(ckpt_dir)
    assert loaded.model.image_size == 128 and loaded.layout.spaces[0].names == OFFICIAL_ATTRS
    assert loaded.D is not None
    again = runner.invoke(app, ["fetch", "pretrained-celeba-128", "--mirror", url,
                                "--home", str(home)])
    assert again.exit_code == 0 and "already imported" in again.output
    # translate accepts the registry name as the checkpoint
    Image.fromarray(np.zeros((140, 150, 3), np.uint8)).save(tmp_path / "me.png")
    result = translate(TranslateConfig(inputs=(tmp_path / "me.png",), targets=("Male=0",),
                                       checkpoint=Path("pretrained-celeba-128"), home=home,
                                       out=tmp_path / "out", precision="fp32"))
    assert result.translated == 1
    assert np.array(Image.open(tmp_path / "out" / "Male=0" / "me.png")).shape == (128, 128, 3)


def test_fetch_pretrained_from_a_local_zip(tmp_path, home):
    archive = tmp_path / "celeba-128x128-5attrs.zip"
    _official_zip(archive, tmp_path / "src")
    res = CliRunner().invoke(app, ["fetch", "pretrained-celeba-128", "--from", str(archive),
                                   "--home", str(home), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(summary["path"]).name == "step-00200000"
    assert load_checkpoint(Path(summary["path"]), with_discriminator=False).model.c_dim == 5


def test_fetch_pretrained_rejects_an_archive_without_weights(tmp_path, home, server):
    root, url = server
    _official_zip(root / "celeba-128x128-5attrs.zip", tmp_path / "src", with_g=False)
    res = CliRunner().invoke(app, ["fetch", "pretrained-celeba-128", "--mirror", url,
                                   "--home", str(home)])
    assert res.exit_code == 1
    assert "200000-G.ckpt" in res.output and "not the official one" in res.output
    # the bad download is not kept as if it were good
    assert not (home / "raw" / "pretrained-celeba-128" / "celeba-128x128-5attrs.zip").exists()


def test_translate_with_unfetched_pretrained_name(tmp_path, home):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "me.png")
    with pytest.raises(CheckpointError, match="starcli fetch pretrained-celeba-256"):
        translate(TranslateConfig(inputs=(tmp_path / "me.png",), targets=("Male=0",),
                                  checkpoint=Path("pretrained-celeba-256"), home=home,
                                  out=tmp_path / "out"))
