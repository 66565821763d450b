"""Official StarGAN v2 weights → starcli checkpoints → translate, against the original modules;
w_hpf>0 files import with their FAN (wing.ckpt or a 'fan' entry) or --no-masks; bad --domains
and unsafe pickles give one line; `starcli fetch pretrained-v2-afhq` over a loopback server."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from starcli.checkpoint import load_checkpoint
from starcli.cli import app
from starcli.errors import ConfigError
from starcli.families.stargan_v2.fan import FAN, face_masks
from starcli.families.stargan_v2.importer import import_stargan_v2
from starcli.families.stargan_v2.networks import V2ModelConfig, build_v2
from starcli.families.stargan_v2.official import to_official_v2
from starcli.translate import TranslateConfig, translate

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
DOMAINS = ("cat", "dog", "wild")


def _cfg(size: int = SIZE, w_hpf: float = 0.0, k: int = 3) -> V2ModelConfig:
    return V2ModelConfig(image_size=size, num_domains=k, latent_dim=16, style_dim=8,
                         w_hpf=w_hpf, max_conv_dim=16, dim_in=8 if size == SIZE else 4,
                         mapping_hidden=16)


def official_file(folder: Path, cfg: V2ModelConfig | None = None, seed: int = 0,
                  name: str = "100000_nets_ema.ckpt", with_d: bool = False):
    """Random modules saved the way the official CheckpointIO writes nets_ema (nets with D)."""
    torch.manual_seed(seed)
    modules = build_v2(cfg or _cfg())
    with torch.no_grad():  # non-zero biases, so a dropped or swapped tensor shows
        for m in modules.values():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    keep = "GFED" if with_d else "GFE"
    torch.save(to_official_v2({n: modules[n] for n in keep}), path)
    return path, modules


def _images(folder: Path, n: int = 3, size: int = SIZE) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"pet{i}.png")
        out.append(rgb)
    return out


def _seeded_z(rgb: np.ndarray, latent_dim: int) -> torch.Tensor:
    """The translator's documented z: one draw seeded by the input's CHW uint8 pixels."""
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    gen = torch.Generator().manual_seed(zlib.crc32(chw.tobytes()))
    return torch.randn(latent_dim, generator=gen)[None]


# --- import ------------------------------------------------------------------------------

def test_import_keeps_the_weights_and_translate_equals_the_original(tmp_path):
    ema, modules = official_file(tmp_path / "official")
    nets, with_d = official_file(tmp_path / "official", name="100000_nets.ckpt", seed=1,
                                 with_d=True)
    ckpt_dir = import_stargan_v2(ema, DOMAINS, tmp_path / "run", image_size=SIZE,
                                 discriminator=nets)
    assert ckpt_dir.name == "step-00100000"
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    assert meta["family"] == "stargan-v2" and meta["has_discriminator"] is True
    imported = meta["imported"]
    assert imported["nets_ema"] == ema.name and len(imported["nets_ema_sha256"]) == 64
    assert imported["discriminator"] == nets.name
    assert meta["datasets"][0]["framing"] == {
        "dataset": "afhq", "format": "domain-folders", "source": [SIZE, SIZE], "crop": None,
        "size": SIZE, "resize": "area"}
    assert "masks" not in meta
    assert sorted(p.name for p in ckpt_dir.glob("*.safetensors")) == [
        "D.safetensors", "E_ema.safetensors", "F_ema.safetensors", "G_ema.safetensors"]

    loaded = load_checkpoint(ckpt_dir)
    assert loaded.ema and loaded.model.domains.names == DOMAINS
    assert loaded.model.networks() == _cfg()  # every width read back from the shapes
    assert loaded.layout.spaces[0].names == DOMAINS and loaded.layout.spaces[0].kind == "onehot"
    for name, original in (("G", modules["G"]), ("F", modules["F"]), ("E", modules["E"]),
                           ("D", with_d["D"])):
        want, got = original.state_dict(), loaded.modules[name].state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name

    # translate --to dog: G(x, F(z, dog)) with the z seeded by the input itself
    images = _images(tmp_path / "in")
    result = translate(TranslateConfig(inputs=(tmp_path / "in",), targets=("dog",),
                                       checkpoint=tmp_path / "run", out=tmp_path / "out",
                                       precision="fp32"))
    assert result.translated == 3
    G, F = modules["G"].eval(), modules["F"].eval()
    with torch.no_grad():
        for i, rgb in enumerate(images):
            x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
            y = G(x, F(_seeded_z(rgb, 16), torch.tensor([1])))
            expected = ((y[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0)
            got = np.array(Image.open(tmp_path / "out" / "dog" / f"pet{i}.png"))
            assert np.abs(got.astype(int) - expected.numpy()).max() <= 1, i
            assert not np.array_equal(got, rgb)


def test_w_hpf_file_without_filter_needs_a_fan_or_no_masks(tmp_path):
    cfg = _cfg(w_hpf=1.0, k=2)
    path, modules = official_file(tmp_path / "official", cfg)
    assert "hpf.filter" not in torch.load(path, weights_only=True)["generator"]
    with pytest.raises(ConfigError, match="no 'fan' entry: pass --wing wing.ckpt.*--no-masks"):
        import_stargan_v2(path, ("female", "male"), tmp_path / "run", image_size=SIZE)
    assert not (tmp_path / "run").exists()

    lines: list[str] = []
    progress = type("P", (), {"log": lambda self, m: lines.append(m)})()
    ckpt_dir = import_stargan_v2(path, ("female", "male"), tmp_path / "run", image_size=SIZE,
                                 no_masks=True, progress=progress)
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    assert meta["masks"] is False and meta["model"]["w_hpf"] == 1.0
    assert meta["datasets"][0]["framing"]["dataset"] == "celeba-hq"
    assert any("high-pass skips are not used" in m and "fine facial detail" in m for m in lines)
    loaded = load_checkpoint(ckpt_dir)
    want = modules["G"].state_dict()
    assert all(torch.equal(want[k], v) for k, v in loaded.G.state_dict().items())

    runner = CliRunner()
    base = ["import", "stargan-v2", str(path), "--domains", "female,male", "--image-size",
            str(SIZE)]
    refused = runner.invoke(app, [*base, "--out", str(tmp_path / "cli")])
    assert refused.exit_code == 2
    assert "--no-masks" in refused.output and "Traceback" not in refused.output
    wing = tmp_path / "wing.ckpt"
    torch.save({"state_dict": {}}, wing)
    bad = runner.invoke(app, [*base, "--wing", str(wing), "--out", str(tmp_path / "cli")])
    assert bad.exit_code == 1, bad.output
    assert "wing.ckpt: not the FAN's weights" in bad.output and "missing" in bad.output
    assert "Traceback" not in bad.output


def _fan_state(seed: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return FAN().state_dict()


def test_wing_import_translates_with_face_masks(tmp_path):
    cfg = _cfg(w_hpf=1.0, k=2)
    path, modules = official_file(tmp_path / "official", cfg)
    wing = tmp_path / "wing.ckpt"
    torch.save({"state_dict": _fan_state()}, wing)
    runner = CliRunner()
    base = ["import", "stargan-v2", str(path), "--domains", "female,male", "--image-size",
            str(SIZE)]
    ok = runner.invoke(app, [*base, "--wing", str(wing), "--out", str(tmp_path / "masked")])
    assert ok.exit_code == 0, ok.output
    plain = runner.invoke(app, [*base, "--no-masks", "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    masked_dir = next((tmp_path / "masked" / "checkpoints").iterdir())
    wing.unlink()  # the checkpoint is self-contained
    meta = json.loads((masked_dir / "meta.json").read_text())
    assert meta["masks"] is True and "FAN" in meta["modules"]
    ckpt = load_checkpoint(masked_dir)
    fan = ckpt.modules["FAN"]
    assert not fan.training
    tr = ckpt_translator(ckpt)
    tr_plain = ckpt_translator(load_checkpoint(tmp_path / "plain"))
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s = torch.randn(2, cfg.style_dim, generator=torch.Generator().manual_seed(1))
    got = tr.generate_styled(x, s)
    with torch.no_grad():
        want = modules["G"](x, s, masks=face_masks(fan, x))
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, tr_plain.generate_styled(x, s), atol=1e-3)
    # K styles of one batch run the landmark network once; a new batch gets its own masks
    calls = []
    hook = tr.fan.register_forward_hook(lambda *a: calls.append(1))
    for k in range(3):
        tr.generate_styled(x, s.roll(k, 0))
    assert calls == []  # the masks of x were made above
    other = x.flip(0)
    got2 = tr.generate_styled(other, s)
    assert len(calls) == 1
    with torch.no_grad():
        want2 = modules["G"](other, s, masks=face_masks(fan, other))
    assert torch.allclose(got2, want2, atol=1e-5)
    hook.remove()


def test_fan_entry_of_the_file_is_used_without_wing(tmp_path):
    cfg = _cfg(w_hpf=1.0, k=2)
    path, _ = official_file(tmp_path / "official", cfg)
    ckpt = torch.load(path, weights_only=True)
    ckpt["fan"] = _fan_state(7)
    torch.save(ckpt, path)
    ckpt_dir = import_stargan_v2(path, ("female", "male"), tmp_path / "run", image_size=SIZE)
    loaded = load_checkpoint(ckpt_dir)
    assert all(torch.equal(v, loaded.modules["FAN"].state_dict()[k])
               for k, v in _fan_state(7).items())


def ckpt_translator(ckpt):
    from starcli.families import get_family

    return get_family("stargan-v2").translator(ckpt, torch.device("cpu"), "fp32")


def test_wrong_domain_count_and_unsafe_pickle_give_one_line(tmp_path):
    path, _ = official_file(tmp_path / "official")
    runner = CliRunner()
    res = runner.invoke(app, ["import", "stargan-v2", str(path), "--domains", "cat,dog",
                              "--image-size", str(SIZE), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "--domains" in res.output and "has 3" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()

    marker = tmp_path / "pwned"
    evil = tmp_path / "100000_nets_ema.ckpt"
    torch.save({"generator": {"x": _Payload(marker)}}, evil)
    res = runner.invoke(app, ["import", "stargan-v2", str(evil), "--domains", "cat,dog,wild",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 1
    assert "weights_only" in res.output and "Traceback" not in res.output
    assert res.output.strip().splitlines()[0].startswith("Error:")
    assert not marker.exists() and not (tmp_path / "run").exists()

    v1 = tmp_path / "200000-G.ckpt"  # a StarGAN v1 generator is not taken for a v2 file
    torch.save({"main.0.weight": torch.zeros(3)}, v1)
    res = runner.invoke(app, ["import", "stargan-v2", str(v1), "--domains", "cat,dog,wild",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "no 'generator' network" in res.output


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_import_refuses_an_occupied_out_unless_forced(tmp_path):
    path, _ = official_file(tmp_path / "official")
    args = ["import", "stargan-v2", str(path), "--domains", "cat,dog,wild", "--image-size",
            str(SIZE), "--out", str(tmp_path / "run"), "--json"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    info = json.loads(first.stdout.strip().splitlines()[-1])
    assert info["domains"] == list(DOMAINS) and Path(info["checkpoint"]).is_dir()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


# --- fetch pretrained-v2-afhq over loopback ---------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


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


def test_fetch_pretrained_v2_afhq_then_translate_by_name(tmp_path, home, server):
    root, url = server
    # The registry entry says 256 px: a narrow model keeps that fast.
    official_file(root, _cfg(size=256))
    runner = CliRunner()
    res = runner.invoke(app, ["fetch", "pretrained-v2-afhq", "--mirror", url,
                              "--home", str(home), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    ckpt_dir = home / "pretrained" / "pretrained-v2-afhq" / "checkpoints" / "step-00100000"
    assert Path(summary["path"]) == ckpt_dir and summary["domains"] == list(DOMAINS)
    loaded = load_checkpoint(ckpt_dir)
    assert loaded.model.image_size == 256 and loaded.model.domains.names == DOMAINS
    assert loaded.D is None and loaded.meta["has_discriminator"] is False
    again = runner.invoke(app, ["fetch", "pretrained-v2-afhq", "--mirror", url,
                                "--home", str(home)])
    assert again.exit_code == 0 and "already imported" in again.output

    Image.fromarray(np.full((300, 280, 3), 90, np.uint8)).save(tmp_path / "cat.png")
    res = runner.invoke(app, ["translate", str(tmp_path / "cat.png"), "--to", "wild",
                              "--checkpoint", "pretrained-v2-afhq", "--home", str(home),
                              "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert np.array(Image.open(tmp_path / "out" / "wild" / "cat.png")).shape == (256, 256, 3)


def test_fetch_pretrained_v2_rejects_a_web_page(tmp_path, home, server):
    root, url = server
    (root / "100000_nets_ema.ckpt").write_text("<html>quota exceeded</html>")
    res = CliRunner().invoke(app, ["fetch", "pretrained-v2-celeba-hq", "--mirror", url,
                                   "--home", str(home)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert not (home / "raw" / "pretrained-v2-celeba-hq" / "100000_nets_ema.ckpt").exists()


def test_fetch_pretrained_v2_celeba_hq_from_a_local_file_masks_only_with_a_fan(tmp_path, home):
    path, _ = official_file(tmp_path / "src", _cfg(size=256, w_hpf=1.0, k=2))
    res = CliRunner().invoke(app, ["fetch", "pretrained-v2-celeba-hq", "--from", str(path),
                                   "--home", str(home), "--json"])
    assert res.exit_code == 0, res.output
    assert "else importing with --no-masks" in res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["masks"] is False and summary["w_hpf"] == 1.0
    meta = json.loads((Path(summary["path"]) / "meta.json").read_text())
    assert meta["masks"] is False and meta["model"]["domains"]["names"] == ["female", "male"]

    ckpt = torch.load(path, weights_only=True)
    ckpt["fan"] = _fan_state(9)  # the official release carries its FAN
    torch.save(ckpt, path)
    res = CliRunner().invoke(app, ["fetch", "pretrained-v2-celeba-hq", "--from", str(path),
                                   "--home", str(home), "--json", "--force"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["masks"] is True
    assert "FAN" in load_checkpoint(summary["path"]).modules
