"""The StarGAN v2 eval protocol (`starcli.eval_v2`) and LPIPS (`starcli.lpips`)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from starcli import eval_v2
from starcli import lpips as ours
from starcli.eval_v2 import FidBackbone, RefLoader, plan_tasks, run_protocol

pytestmark = pytest.mark.usefixtures("one_thread")


# --- The generation plan ---------------------------------------------------------------------

def test_plan_has_every_ordered_pair_every_input_and_paired_references(monkeypatch):
    created = []

    class Counting(RefLoader):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            created.append(self)

    monkeypatch.setattr(eval_v2, "RefLoader", Counting)
    own = np.array([0] * 40 + [1] * 7 + [2] * 33 + [-1] * 3)
    np.random.default_rng(1).shuffle(own)
    tasks = plan_tasks(own, 3, outputs=10, batch_size=16, rng=np.random.default_rng(0))
    assert [(t.source, t.target) for t in tasks] == [(1, 0), (2, 0), (0, 1), (2, 1),
                                                     (0, 2), (1, 2)]
    assert len(created) == 3  # one reference loader per target, shared by its sources
    for t in tasks:
        rows = np.concatenate(t.batches)
        assert sorted(rows) == sorted(np.flatnonzero(own == t.source))  # each input once
        assert all(len(b) <= 16 for b in t.batches)
        assert len(t.refs) == len(t.batches)
        for batch, refs in zip(t.batches, t.refs, strict=True):
            assert len(refs) == 10  # one reference batch per output
            for r in refs:  # output k of a batch: source k with reference k
                assert len(r) == len(batch) and (own[r] == t.target).all()
            # The 10 outputs of one input generally see different references.
            assert len({tuple(r) for r in refs}) > 1
    # Domain 1 has 7 images, fewer than one batch: the official drop_last loader is empty
    # there (a crash); ours keeps the short batch and appends reshuffled ones.
    assert created[1].drop_last is False
    to_small = [t for t in tasks if t.target == 1]
    assert all(len(r) == len(b) for t in to_small for b, refs in zip(t.batches, t.refs,
                                                                      strict=True) for r in refs)


def test_reference_loader_drops_the_last_batch_truncates_and_reshuffles():
    loader = RefLoader(np.arange(10), batch_size=4, rng=np.random.default_rng(0))
    a, b = loader.next(4), loader.next(3)  # 10 // 4 = 2 full batches per epoch
    assert len(a) == 4 and len(b) == 3 and not set(a) & set(b)
    assert loader.epochs == 1
    loader.next(4)
    assert loader.epochs == 2  # exhausted: re-created
    small = RefLoader(np.arange(3), batch_size=4, rng=np.random.default_rng(0))
    got = small.next(5)
    assert len(got) == 5 and set(got) <= {0, 1, 2}
    assert sorted(got[:3]) == [0, 1, 2]  # the whole short batch first


# --- LPIPS -------------------------------------------------------------------------------------

def _shifted(v: np.ndarray) -> torch.Tensor:
    """Pixels whose scaled value (x - shift) / scale is `v` (C=3, H, W)."""
    shift = np.asarray(ours.SHIFT)[:, None, None]
    scale = np.asarray(ours.SCALE)[:, None, None]
    return torch.tensor(shift + scale * v, dtype=torch.float64).float()[None]


def test_lpips_equals_the_hand_computed_value_on_a_tiny_network():
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0  # features = the first two scaled channels
        conv.weight[1, 1] = 1.0
    trunk = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d((1, 2)))
    net = ours.LPIPS(trunk, (1, 2), [torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0])])
    # Two pixels; scaled channels (3, 4), (2, 0) in a and (4, 3), (0, 1) in b.
    a = _shifted(np.array([[[3, 2]], [[4, 0]], [[0, 0]]], float))
    b = _shifted(np.array([[[4, 0]], [[3, 1]], [[0, 0]]], float))
    # Layer 1 per pixel: unit vectors (.6, .8) vs (.8, .6), and (1, 0) vs (0, 1).
    p1 = 1 * (0.6 - 0.8) ** 2 + 2 * (0.8 - 0.6) ** 2
    p2 = 1 * (1 - 0) ** 2 + 2 * (0 - 1) ** 2
    layer1 = (p1 + p2) / 2
    # Layer 2, the mean of the two pixels' features: (2.5, 2) vs (2, 2).
    na = (2.5 / math.sqrt(10.25), 2 / math.sqrt(10.25))
    nb = (1 / math.sqrt(2), 1 / math.sqrt(2))
    layer2 = 1 * (na[0] - nb[0]) ** 2 + 3 * (na[1] - nb[1]) ** 2
    assert float(net(a, b)[0]) == pytest.approx(layer1 + layer2, rel=1e-5)
    assert float(net(a, a)[0]) == 0.0


def _package_pair():
    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's pretrained= deprecation
        torch.manual_seed(0)
        ref = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    state = {}
    for part in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4,
                 ref.net.slice5):
        state.update({f"features.{k}": v for k, v in part.state_dict().items()})
    return ref, state


def test_lpips_matches_the_lpips_package_with_the_same_trunk():
    ref, state = _package_pair()
    net = ours.LPIPS(ours.alexnet_trunk(state), ours.ALEX_TAPS,
                     ours.read_linear(ours.find_lpips_weights()))
    gen = torch.Generator().manual_seed(1)
    for size in (32, 64):
        a = torch.rand(3, 3, size, size, generator=gen) * 2 - 1
        b = torch.rand(3, 3, size, size, generator=gen) * 2 - 1
        with torch.no_grad():
            want = ref(a, b).flatten()
        assert torch.allclose(net(a, b), want, rtol=1e-5, atol=1e-7)


def test_missing_lpips_weights_skip_with_one_line_and_never_download(tmp_path, monkeypatch):
    def no_download(*a, **kw):
        raise AssertionError("download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    net, note = ours.load_lpips()
    assert net is None and "\n" not in note
    assert ours.ALEX_FILE in note and "--alexnet-weights" in note
    monkeypatch.setattr(ours, "_package_weights", lambda: None)
    net, note = ours.load_lpips()
    assert net is None and "pip install lpips" in note and "--lpips-weights" in note
    monkeypatch.undo()
    # The trunk found in the hub cache by its torchvision name.
    _, state = _package_pair()
    hub = tmp_path / "hub2"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(state, hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    net, note = ours.load_lpips()
    assert note is None and net.weights["alexnet"].endswith("alexnet-owt-7be5be79.pth")


# --- FID backbones ------------------------------------------------------------------------------

def test_torchvision_backbone_input_is_two_pil_resizes_and_imagenet_normalisation():
    from PIL import Image

    im = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x = eval_v2.torchvision_input(im[None])
    assert x.shape == (1, 3, 299, 299)
    pil = Image.fromarray(im).resize((256, 256), Image.BILINEAR).resize((299, 299),
                                                                           Image.BILINEAR)
    want = np.asarray(pil, np.float32)[10, 20] / 255.0
    got = x[0, :, 10, 20].numpy() * np.asarray(eval_v2.IMAGENET_STD) + \
        np.asarray(eval_v2.IMAGENET_MEAN)
    assert np.allclose(got, want, atol=1e-6)


def test_missing_inception_weights_name_the_backbones_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    for name, file in (("torchvision", "inception_v3_google"), ("tf-inception", "pt_inception")):
        backbone, note = eval_v2.load_backbone(name, None, torch.device("cpu"))
        assert backbone is None and file in note and name in note


# --- Running it ---------------------------------------------------------------------------------

class _Stub:
    """A style model whose images are their row index: records what each output paired."""

    latent_dim = 4
    device = torch.device("cpu")
    has_styles = True

    def __init__(self):
        self.pairs = []  # (source rows, reference rows or None)
        self._ref = None

    def to_input(self, images):
        return torch.from_numpy(images[:, 0, 0, 0].astype(np.float32))[:, None, None, None] \
            .expand(-1, 3, 2, 2).clone()

    def latent_style(self, z, y):
        self._ref = None
        return z

    def reference_style(self, ref, y):
        self._ref = ref[:, 0, 0, 0].long().tolist()
        return torch.zeros(len(ref), 4)

    def generate_styled(self, x, s):
        self.pairs.append((x[:, 0, 0, 0].long().tolist(), self._ref))
        return x / 100.0 + s[:, :1, None, None]


def test_run_pairs_outputs_as_planned_and_fid_compares_with_the_targets_train_images():
    own = np.array([0, 1, 0, 1, 1, 0, 0])
    images = np.arange(len(own), dtype=np.uint8)[:, None, None, None].repeat(2, 1) \
        .repeat(2, 2).repeat(3, 3)
    seen_reals = []

    def feats(u8):
        seen_reals.append(len(u8))
        f = u8.reshape(len(u8), -1).astype(np.float64)[:, :2]
        return f + np.random.default_rng(len(seen_reals)).normal(size=f.shape)

    backbone = FidBackbone("stub", None, feats, dim=2)
    train_own = np.array([0] * 5 + [1] * 3)
    reals = [(np.zeros((8, 2, 2, 3), np.uint8) + 50, train_own)]
    model = _Stub()
    out = run_protocol(model, images, own, ["a", "b"], backbone=backbone, reals=reals,
                       seeds=(3,), outputs=4, batch_size=2)
    assert [(t["source"], t["target"]) for t in out["tasks"]] == [("b", "a"), ("a", "b")]
    b2a, a2b = out["tasks"]
    assert (b2a["inputs"], b2a["outputs"]) == (3, 12) and (a2b["inputs"], a2b["outputs"]) == (4, 16)
    # FID's real set is the target's train images: 5 for a, 3 for b.
    assert (b2a["fid_latent_reals"], a2b["fid_reference_reals"]) == (5, 3)
    assert all(t[k] is not None for t in out["tasks"] for k in ("fid_latent", "fid_reference"))
    # Replaying the plan with the seed's rng gives the pairs the model saw.
    tasks = plan_tasks(own, 2, outputs=4, batch_size=2, rng=np.random.default_rng(3))
    want = []
    for t in tasks:
        want += [(b.tolist(), None) for b in t.batches for _ in range(4)]
        want += [(b.tolist(), r.tolist()) for b, refs in zip(t.batches, t.refs, strict=True)
                 for r in refs]
    assert model.pairs == want
    assert out["std"]["fid_latent"] == 0.0 and out["per_seed"][0]["seed"] == 3


@pytest.fixture
def v2(tiny_v2):
    return tiny_v2


def test_eval_runs_the_protocol_on_a_tiny_v2_checkpoint(v2, tmp_path, monkeypatch):
    from starcli.evaluate import EvalConfig, evaluate

    home, ckpt = v2
    _, state = _package_pair()
    alex = tmp_path / "alex.pth"
    torch.save(state, alex)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    report = evaluate(EvalConfig(checkpoint=ckpt, home=home, metrics=("fid_v2", "lpips"),
                                 alexnet_weights=alex, seeds=2, outputs_per_input=3,
                                 device="cpu", out=tmp_path / "report"))
    v = report["v2_protocol"]
    assert v["backbone"] == "torchvision" and v["seeds"] == [0, 1]
    assert v["fid"] is False and "inception_v3_google" in v["skipped"][0]  # no Inception here
    assert [(t["source"], t["target"]) for t in v["tasks"]] == [("male", "female"),
                                                                 ("female", "male")]
    for mode in ("latent", "reference"):
        assert v["mean"][f"lpips_{mode}"] > 0 and v["std"][f"lpips_{mode}"] >= 0
        assert v["mean"][f"fid_{mode}"] is None
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["v2_protocol"]["mean"] == v["mean"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "LPIPS latent: " in md and "± " in md and "inception_v3_google" in md


def test_the_protocol_is_skipped_in_one_line_for_label_families(monkeypatch):
    from types import SimpleNamespace

    import starcli.families as families
    from starcli.evaluate import EvalConfig

    fam = SimpleNamespace(translator=lambda *a, **kw: SimpleNamespace())
    monkeypatch.setattr(families, "get_family", lambda name: fam)
    out = eval_v2.evaluate_protocol(SimpleNamespace(family="stargan"), None, (),
                                    EvalConfig(metrics=("lpips",)), torch.device("cpu"))
    assert "applies to StarGAN v2 checkpoints" in out["skipped_all"]
    assert eval_v2.markdown_lines(out)[0].startswith("> fid_v2, lpips: applies")


def test_cli_flags_reach_the_config_and_the_protocol_lines_print(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import starcli.evaluate as engine
    from starcli.cli import app

    seen = {}
    lp, alex = tmp_path / "lin.pth", tmp_path / "alex.pth"
    lp.write_bytes(b"x")
    alex.write_bytes(b"x")
    v2 = {"backbone": "tf-inception", "fid": True, "lpips": True, "seeds": [0, 1],
          "skipped": [], "tasks": [{"source": "cat", "target": "dog", "fid_latent": 10.0,
                                    "fid_reference": 12.0, "lpips_latent": 0.4,
                                    "lpips_reference": 0.3}],
          "mean": {"fid_latent": 10.0, "fid_reference": 12.0, "lpips_latent": 0.4,
                   "lpips_reference": 0.3},
          "std": {"fid_latent": 0.1, "fid_reference": 0.2, "lpips_latent": 0.001,
                  "lpips_reference": 0.002}, "per_seed": []}

    def fake(cfg, progress=None):
        seen["cfg"] = cfg
        return {"step": 3, "split": "test", "checkpoint": "ck", "out": "o",
                "summary": {}, "datasets": [], "fid": None, "v2_protocol": v2,
                "files": {"markdown": "r.md", "samples": {}, "chart": None}}

    monkeypatch.setattr(engine, "evaluate", fake)
    res = CliRunner().invoke(app, ["eval", "--metrics", "fid_v2,lpips", "--fid-backbone",
                                   "tf-inception", "--lpips-weights", str(lp),
                                   "--alexnet-weights", str(alex), "--seeds", "2",
                                   "--outputs-per-input", "5", "--json"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.metrics == ("fid_v2", "lpips") and cfg.fid_backbone == "tf-inception"
    assert (cfg.lpips_weights, cfg.alexnet_weights) == (lp, alex)
    assert (cfg.seeds, cfg.outputs_per_input) == (2, 5)
    assert "FID latent (tf-inception backbone): 10.00 ± 0.10" in res.output
    assert "LPIPS reference: 0.3000 ± 0.0020" in res.output
    res = CliRunner().invoke(app, ["eval", "--fid-backbone", "tf"])
    assert res.exit_code != 0 and "--fid-backbone" in res.output
