"""The stargan-v1 options that keep what is not the target: the blending generator, the
identity and mask losses, and D's augmentations."""

from __future__ import annotations

import pytest
import torch

from starcli.config import TrainConfig
from starcli.errors import ConfigError
from starcli.families.stargan_v1.networks import Generator, ModelConfig
from starcli.models.augment import augment, total_variation


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=_gen(5))


def test_shift_is_an_exact_integer_translation_within_an_eighth():
    x = _images()
    y = augment(x, ("shift",), _gen(1))
    for i in range(len(x)):
        found = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                want = torch.zeros_like(x[i])
                src = x[i][:, max(-dy, 0):16 - max(dy, 0), max(-dx, 0):16 - max(dx, 0)]
                want[:, max(dy, 0):16 - max(-dy, 0), max(dx, 0):16 - max(-dx, 0)] = src
                if torch.equal(y[i], want):
                    found.append((dy, dx))
        assert found, f"image {i} is not a shift of its input by at most 2 pixels"
    # Per-image draws: not every image gets the same shift.
    assert not all(torch.equal(y[0] - x[0], y[i] - x[i]) for i in range(1, len(x)))


def test_jitter_moves_at_most_a_sixteenth_and_repeats_the_edges():
    x = _images()  # 16 px: at most one pixel
    y = augment(x, ("jitter",), _gen(2))
    for i in range(len(x)):
        found = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                rows = (torch.arange(16) - dy).clamp(0, 15)
                cols = (torch.arange(16) - dx).clamp(0, 15)
                if torch.equal(y[i], x[i][:, rows][:, :, cols]):
                    found.append((dy, dx))
        assert found, f"image {i} is not an edge-repeating shift by at most 1 pixel"
    assert not all(torch.equal(y[0] - x[0], y[i] - x[i]) for i in range(1, len(x)))


def test_cutout_zeroes_one_square_and_draws_repeat_with_the_generator():
    x = _images().abs() + 1  # no zeros of its own
    y = augment(x, ("cutout",), _gen(2))
    for i in range(len(x)):
        zero = (y[i] == 0).all(0)
        rows, cols = zero.any(1).sum(), zero.any(0).sum()
        assert 0 < zero.sum() <= 16 and rows <= 4 and cols <= 4
        assert zero.sum() == rows * cols  # a rectangle (a square clipped at the border)
        assert torch.equal(y[i][:, ~zero], x[i][:, ~zero])
    assert torch.equal(y, augment(x, ("cutout",), _gen(2)))
    assert not torch.equal(y, augment(x, ("cutout",), _gen(3)))


def test_augment_lets_gradients_through_and_keeps_channels_last():
    x = _images().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = augment(x, ("colour", "shift", "cutout"), _gen(0))
    assert y.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="wobble"):
        augment(x, ("wobble",), _gen(0))


def test_noise_adds_seeded_gaussian_noise_of_std_a_tenth():
    x = torch.zeros(64, 3, 32, 32)
    a = augment(x, ("noise",), torch.Generator().manual_seed(3))
    b = augment(x, ("noise",), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert abs(a.mean().item()) < 0.005 and abs(a.std().item() - 0.1) < 0.005


@pytest.mark.parametrize("kind", ["multilabel", "onehot"])
def test_classifier_gradient_penalty_is_each_images_own_squared_gradient(kind):
    from starcli.models.losses import classification_loss, classifier_gradient_penalty

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))
    x = torch.randn(6, 3, 8, 8)
    labels = (torch.rand(6, 5) < 0.5).float() if kind == "multilabel" else \
        torch.randint(0, 5, (6,))
    penalty = classifier_gradient_penalty(net, x, labels, kind)
    expected = []
    for i in range(6):  # one image at a time: its own loss, its own gradient
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(classification_loss(net(xi), labels[i:i + 1], kind), xi)
        expected.append(g.square().sum())
    assert torch.allclose(penalty, torch.stack(expected).mean(), rtol=1e-5)
    penalty.backward()  # the graph reaches the classifier's weights
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
    # A classifier that ignores its input has nothing to penalise.
    flat = classifier_gradient_penalty(lambda z: torch.zeros(6, 5) + 0 * z.sum(), x, labels,
                                       kind)
    assert flat.item() == 0.0


@pytest.mark.parametrize("kind", ["multilabel", "onehot"])
def test_fgsm_moves_every_pixel_by_eps_to_raise_the_loss(kind):
    from starcli.models.losses import classification_loss, fgsm_images

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x = torch.rand(6, 3, 8, 8) * 1.6 - 0.8  # inside [-1, 1] by more than eps
    labels = (torch.rand(6, 5) < 0.5).float() if kind == "multilabel" else \
        torch.randint(0, 5, (6,))
    adv = fgsm_images(net, x, labels, kind, 0.1)
    assert not adv.requires_grad
    assert torch.allclose((adv - x).abs(), torch.full_like(x, 0.1), atol=1e-6)
    for i in range(6):  # each image's own loss goes up
        before = classification_loss(net(x[i:i + 1]), labels[i:i + 1], kind)
        after = classification_loss(net(adv[i:i + 1]), labels[i:i + 1], kind)
        assert after > before
    edge = fgsm_images(net, torch.ones(2, 3, 8, 8), labels[:2], kind, 0.5)
    assert edge.max() <= 1.0  # clamped to the pixel range


@pytest.mark.parametrize("kind", ["multilabel", "onehot"])
def test_pgd_stays_within_eps_and_beats_fgsm_on_a_curved_classifier(kind):
    from starcli.models.losses import classification_loss, fgsm_images

    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 32),
                              torch.nn.Tanh(), torch.nn.Linear(32, 5))
    with torch.no_grad():
        net[0 + 1].weight.mul_(8)  # a strongly curved loss surface around x
    x = torch.rand(16, 3, 8, 8) * 1.6 - 0.8
    labels = (torch.rand(16, 5) < 0.5).float() if kind == "multilabel" else \
        torch.randint(0, 5, (16,))
    one = fgsm_images(net, x, labels, kind, 0.1)
    assert torch.equal(one, fgsm_images(net, x, labels, kind, 0.1, steps=1))
    pgd = fgsm_images(net, x, labels, kind, 0.1, steps=7)
    assert (pgd - x).abs().max() <= 0.1 + 1e-6 and not pgd.requires_grad
    assert not torch.allclose(pgd, one)
    loss = {name: classification_loss(net(a), labels, kind).item()
            for name, a in (("x", x), ("fgsm", one), ("pgd", pgd))}
    assert loss["pgd"] > loss["fgsm"] > loss["x"], loss
    with pytest.raises(ValueError):
        fgsm_images(net, x, labels, kind, 0.1, steps=0)


@pytest.mark.parametrize("kind", ["multilabel", "onehot"])
def test_l2_fgsm_spends_eps_in_l2_along_the_gradient_and_keeps_a_thin_feature(kind):
    from starcli.models.losses import classification_loss, fgsm_images

    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x = torch.rand(6, 3, 8, 8) * 1.6 - 0.8
    labels = (torch.rand(6, 5) < 0.5).float() if kind == "multilabel" else \
        torch.randint(0, 5, (6,))
    adv = fgsm_images(net, x, labels, kind, 0.5, norm="l2")
    delta = (adv - x).flatten(1)
    assert torch.allclose(delta.norm(dim=1), torch.full((6,), 0.5), atol=1e-5)
    for i in range(6):  # along the image's own gradient, and its loss goes up
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(classification_loss(net(xi), labels[i:i + 1], kind), xi)
        assert torch.nn.functional.cosine_similarity(delta[i], g.flatten(), dim=0) > 0.999
        assert classification_loss(net(adv[i:i + 1]), labels[i:i + 1], kind) > \
            classification_loss(net(x[i:i + 1]), labels[i:i + 1], kind)
    pgd = fgsm_images(net, x, labels, kind, 0.5, steps=5, norm="l2")
    assert ((pgd - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    with pytest.raises(ValueError):
        fgsm_images(net, x, labels, kind, 0.5, norm="l1")

    # Why l2: a classifier that reads one thin line of 8 pixels, 0.2 brighter than the rest.
    # An L-infinity ball of radius 0.1 takes half of its evidence (1.6 -> 0.8); an L2 ball of
    # radius 0.1 takes only 0.1 * sqrt(8).
    w = torch.zeros(3, 8, 8)
    w[0, 3] = 1.0  # the line: row 3 of the red channel
    line = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 1, bias=False))
    with torch.no_grad():
        line[1].weight.copy_(w.flatten()[None])
    face = torch.zeros(1, 3, 8, 8)
    face[0, 0, 3] = 0.2
    y = torch.ones(1, 1)
    inf = fgsm_images(line, face, y, "multilabel", 0.1)
    two = fgsm_images(line, face, y, "multilabel", 0.1, norm="l2")
    assert line(inf).item() == pytest.approx(0.8, abs=1e-5)  # 1.6 of evidence -> 0.8
    assert line(two).item() == pytest.approx(1.6 - 0.1 * 8 ** 0.5, abs=1e-5)


def test_conditional_scores_pick_each_labels_score_at_the_images_value():
    from starcli.models.losses import conditional_scores

    cond = torch.randn(4, 3, 2, generator=_gen(3))
    labels = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    got = conditional_scores(cond, labels, "multilabel")
    want = torch.tensor([[cond[i, j, int(labels[i, j])] for j in range(3)] for i in range(4)])
    assert torch.equal(got, want)
    # onehot: the on-score of the image's class only, from one-hot rows or class indices
    onehot = torch.nn.functional.one_hot(torch.tensor([2, 0, 1, 2]), 3)
    got = conditional_scores(cond, onehot, "onehot")
    assert torch.equal(got[:, 0], torch.stack([cond[0, 2, 1], cond[1, 0, 1], cond[2, 1, 1],
                                                cond[3, 2, 1]]))
    assert torch.equal(got, conditional_scores(cond, torch.tensor([2, 0, 1, 2]), "onehot"))
    # A score of a value the image does not have gets no gradient: it is never judged by it.
    cond.requires_grad_(True)
    conditional_scores(cond, labels, "multilabel").sum().backward()
    assert torch.equal(cond.grad[:, :, 1], labels.float())
    assert torch.equal(cond.grad[:, :, 0], 1 - labels.float())


def test_conditional_head_is_built_only_when_asked_and_has_a_score_per_label_value():
    from starcli.families.stargan_v1.networks import Discriminator

    plain = Discriminator(ModelConfig(image_size=16, c_dim=5, d_conv_dim=4, d_repeat_num=2))
    assert plain.cond_head is None and not any("cond" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="conditional head"):
        plain(torch.zeros(1, 3, 16, 16), with_cond=True)
    D = Discriminator(ModelConfig(image_size=16, c_dim=5, cls_dim=3, d_conv_dim=4,
                                  d_repeat_num=2, d_cond=True))
    x = torch.randn(2, 3, 16, 16, generator=_gen(4))
    src, cls, cond = D(x, with_cond=True)
    assert cond.shape == (2, 3, 2) and cls.shape == (2, 3)
    # The other outputs are the same with or without the conditional head asked for.
    src2, cls2 = D(x)
    assert torch.equal(src, src2) and torch.equal(cls, cls2)
    assert ModelConfig.from_dict({"image_size": 64, "c_dim": 5}).d_cond is False


def test_total_variation_is_zero_for_flat_masks_only():
    assert total_variation(torch.full((2, 1, 8, 8), 0.3)).item() == 0
    assert total_variation(torch.rand(2, 1, 8, 8, generator=_gen(0))).item() > 0


def test_blend_generator_returns_its_input_where_the_mask_is_closed():
    cfg = ModelConfig(image_size=16, c_dim=3, g_conv_dim=8, g_repeat_num=1, d_repeat_num=2,
                      g_blend=True)
    G = Generator(cfg).eval()
    x, c = _images(2), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    with torch.no_grad():
        out, mask = G(x, c, with_mask=True)
        assert mask.shape == (2, 1, 16, 16) and 0 <= mask.min() and mask.max() <= 1
        # Mask starts mostly closed (bias -2) so the output starts near its input.
        assert mask.mean() < 0.3
        G.to_mask.bias.fill_(-1e4)
        assert torch.allclose(G(x, c), x, atol=1e-6)
        G.to_mask.bias.fill_(1e4)
        closed_off = G(x, c)
        assert (closed_off - x).abs().mean() > 0.1 and closed_off.abs().max() <= 1
    plain = Generator(ModelConfig(image_size=16, c_dim=3, g_conv_dim=8, g_repeat_num=1,
                                  d_repeat_num=2))
    assert plain.to_mask is None and plain(x, c, with_mask=True)[1] is None
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items()
                                  if k != "g_blend"}).g_blend is False  # older checkpoints


@pytest.mark.parametrize("overrides, flag", [
    (dict(d_augment="shift,wobble"), "--d-augment"),
    (dict(lambda_id=-1.0), "--lambda-id"),
    (dict(lambda_mask=-0.1), "--lambda-mask"),
    (dict(lambda_cls_gp=-1.0), "--lambda-cls-gp"),
    (dict(d_warmup=-1), "--d-warmup"),
    (dict(lambda_change_tv=-1.0), "--lambda-change-tv"),
    (dict(d_adv_eps=-0.1), "--d-adv-eps"),
    (dict(d_adv_norm="l1"), "--d-adv-norm"),
    (dict(lambda_cond_adv=-1.0), "--lambda-cond-adv"),
    (dict(g_blend="yes"), "--g-blend"),
])
def test_bad_keep_options_name_their_flag(overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig.from_preset("tiny", datasets=("demo-celeba",), **overrides)


def test_paper_preset_leaves_every_keep_option_off():
    opt = TrainConfig.from_preset("paper", datasets=("celeba",)).options
    assert (opt.g_blend, opt.lambda_id, opt.lambda_mask, opt.lambda_mask_tv, opt.lambda_cls_gp,
            opt.lambda_change_tv, opt.d_adv_eps, opt.d_warmup, opt.augments,
            opt.lambda_cond_adv) == (False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, (), 0.0)


KEEP = dict(g_blend=True, lambda_id=2.0, lambda_mask=0.1, lambda_mask_tv=1e-3,
            lambda_cls_gp=0.5, lambda_change_tv=0.1, d_adv_eps=0.05,
            d_augment="shift,cutout,noise", lambda_cond_adv=0.5,
            adv_loss="lsgan", n_critic=1)


def _cfg(home, run_dir, **overrides) -> TrainConfig:
    values = dict(datasets=("demo-celeba",), home=str(home), device="cpu", precision="fp32",
                  run_dir=str(run_dir), iters=6, save_every=3, sample_every=0, log_every=1,
                  lr_decay_iters=0,  # the schedule then does not depend on --iters
                  **KEEP)
    values.update(overrides)
    return TrainConfig.from_preset("tiny", **values)


def test_keep_options_train_log_their_losses_and_resume_exactly(home, make_dataset, tmp_path,
                                                                 one_thread):
    from safetensors.torch import load_file

    from starcli.checkpoint import load_checkpoint
    from starcli.engine import resume_config, train

    make_dataset(home)
    records: list[dict] = []
    straight = train(_cfg(home, tmp_path / "straight"), on_log=records.append)
    assert straight["step"] == 6
    assert all(r["G/id"] > 0 and 0 < r["G/mask"] < 1 and r["D/cls_gp"] > 0 and
               r["G/change_tv"] > 0 and r["D/cls_adv"] > 0 and r["D/cond_adv"] > 0 and
               r["G/cond_adv"] > 0 for r in records)
    ckpt = load_checkpoint(tmp_path / "straight")
    assert ckpt.model.g_blend and ckpt.G.to_mask is not None
    assert ckpt.model.d_cond and ckpt.D.cond_head is not None

    train(_cfg(home, tmp_path / "half", iters=3))
    resumed = train(resume_config(str(tmp_path / "half"), iters=6))
    assert resumed["resumed_from"] == 3 and resumed["step"] == 6
    for name in ("G", "D"):
        a = load_file(str(tmp_path / "straight/checkpoints/step-00000006" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "half/checkpoints/step-00000006" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"

    # The augmentations are part of what D learns from: without them the run differs.
    train(_cfg(home, tmp_path / "plain", iters=3, d_augment=""))
    a = load_file(str(tmp_path / "plain/checkpoints/step-00000003/D.safetensors"))
    b = load_file(str(tmp_path / "half/checkpoints/step-00000003/D.safetensors"))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_d_warmup_trains_only_the_classifier_then_the_gan(home, make_dataset, tmp_path,
                                                          one_thread):
    from safetensors.torch import load_file

    from starcli.engine import train

    make_dataset(home)
    records: list[dict] = []
    train(_cfg(home, tmp_path / "a", iters=5, d_warmup=3, save_every=3), on_log=records.append)
    by_step = {r["step"]: r for r in records}
    assert all("G/loss" not in by_step[s] and "D/adv" not in by_step[s] and "D/cls" in by_step[s]
               for s in (1, 2, 3))
    assert all("G/loss" in by_step[s] for s in (4, 5))
    # G never steps during the warm-up: its learning rate cannot matter there, D's does.
    train(_cfg(home, tmp_path / "b", iters=3, d_warmup=3, g_lr=5e-2))
    train(_cfg(home, tmp_path / "c", iters=3, d_warmup=3, d_lr=5e-2))

    def weights(run: str, name: str) -> dict:
        return load_file(str(tmp_path / run / "checkpoints/step-00000003" / f"{name}.safetensors"))

    g_a, g_b = weights("a", "G"), weights("b", "G")
    assert all(torch.equal(g_a[k], g_b[k]) for k in g_a)
    d_a, d_c = weights("a", "D"), weights("c", "D")
    assert not all(torch.equal(d_a[k], d_c[k]) for k in d_a)
