"""Fréchet distance on Gaussians with known answers; weight discovery; the Inception path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from starcli.errors import StarcliError
from starcli.fid import (
    FeatureStats,
    GaussianStats,
    fid_between,
    fid_from_features,
    find_weights,
    frechet_distance,
    how_to_provide,
    load_inception,
)


def test_diagonal_gaussians_match_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected,
                                                                                 rel=1e-10)


def test_one_dimension_is_mean_gap_plus_std_gap_squared():
    # N(1, 2²) vs N(4, 5²): (1-4)² + (2-5)² = 18
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([4.0]),
                            np.array([[25.0]])) == pytest.approx(18.0)


def test_rotated_covariances_and_identity():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    d1, d2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    s1, s2 = q @ np.diag(d1) @ q.T, q @ np.diag(d2) @ q.T  # commuting: same eigenvectors
    mu = rng.normal(size=5)
    expected = np.sum(d1 + d2 - 2 * np.sqrt(d1 * d2))
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)


def test_general_covariances_match_the_eigenvalues_of_the_product():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    # σ1σ2 is similar to a PSD matrix, so its eigenvalues are real and non-negative.
    trace_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(expected,
                                                                               rel=1e-9)


def test_low_rank_path_equals_the_covariance_path():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(7, 20))
    fake = rng.normal(size=(5, 20)) * 1.5 + 0.3
    a, b = GaussianStats.of(real), GaussianStats.of(fake)
    assert fid_from_features(real, fake) == pytest.approx(
        frechet_distance(a.mu, a.sigma, b.mu, b.sigma), rel=1e-8)
    many = rng.normal(size=(40, 20))  # more rows than dimensions: the covariance path
    assert fid_from_features(many, many) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError):
        fid_from_features(real[:1], fake)


def test_streaming_stats_give_the_same_distance_on_every_path():
    rng = np.random.default_rng(4)
    dim = 6
    real, fake = rng.normal(size=(9, dim)), rng.normal(size=(4, dim)) * 2 + 1
    big = FeatureStats(dim)
    for chunk in np.array_split(real, 3):  # crosses the switch from rows to sums
        big.add(chunk)
    assert big.rows is None and big.count == 9
    g, ref = big.gaussian(), GaussianStats.of(real)
    np.testing.assert_allclose(g.mu, ref.mu)
    np.testing.assert_allclose(g.sigma, ref.sigma)
    small = FeatureStats(dim)
    small.add(fake)
    assert small.rows is not None
    gf = GaussianStats.of(fake)
    expected = frechet_distance(ref.mu, ref.sigma, gf.mu, gf.sigma)
    assert fid_between(big, small) == pytest.approx(expected, rel=1e-7)  # rows vs sums
    assert fid_between(small, big) == pytest.approx(expected, rel=1e-7)
    other = FeatureStats(dim)
    other.add(fake)
    other.add(fake[:2] + 0.5)  # 6 rows: sums on both sides now
    g2 = GaussianStats.of(np.concatenate([fake, fake[:2] + 0.5]))
    assert fid_between(big, other) == pytest.approx(
        frechet_distance(ref.mu, ref.sigma, g2.mu, g2.sigma), rel=1e-7)


def test_no_weights_anywhere_gives_none_and_a_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert find_weights(None) is None
    assert load_inception(None) is None
    hint = how_to_provide()
    assert "--inception-weights" in hint and str(tmp_path / "hub") in hint
    assert "\n" not in hint


def test_hub_cache_prefers_the_fid_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "inception_v3_google-0cc3c7bd.pth").write_bytes(b"x")
    assert find_weights(None).name == "inception_v3_google-0cc3c7bd.pth"
    (folder / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    assert find_weights(None).name.startswith("pt_inception")
    with pytest.raises(StarcliError, match="--inception-weights"):
        find_weights(tmp_path / "missing.pth")


def test_unreadable_or_foreign_weights_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    unsafe = tmp_path / "evil.pth"
    with open(unsafe, "wb") as fh:
        pickle.dump({"fc.weight": Evil()}, fh, protocol=2)
    with pytest.raises(StarcliError, match="cannot be read"):
        load_inception(unsafe)
    foreign = tmp_path / "foreign.pth"
    torch.save({"fc.weight": torch.zeros(10, 3)}, foreign)
    with pytest.raises(StarcliError, match="not an Inception-v3"):
        load_inception(foreign)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Random Inception-v3 state_dicts standing in for the real files (no network)."""
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    root = tmp_path_factory.mktemp("inception")
    torch.manual_seed(0)
    tv = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(tv.state_dict(), root / "inception_v3_google-test.pth")
    fid = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    save_file({k: v.contiguous() for k, v in fid.state_dict().items()},
              str(root / "pt_inception-test.safetensors"))
    return root


def test_features_from_both_weight_kinds(tiny_weights):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    tv = load_inception(tiny_weights / "inception_v3_google-test.pth")
    fid = load_inception(tiny_weights / "pt_inception-test.safetensors")
    assert (tv.kind, fid.kind) == ("torchvision", "pytorch-fid")
    a, b = tv.features(images, batch_size=1), fid.features(images)
    assert a.shape == b.shape == (2, 2048)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    # Same input, same features: the extractor is deterministic (eval mode).
    np.testing.assert_array_equal(a, tv.features(images))


def test_fid_weights_run_with_tf_pooling(tiny_weights):
    """With 1008-class (pytorch-fid) weights the pool branches exclude padding and the last
    block max-pools, so features differ from torchvision's blocks on the same weights."""
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from torchvision.models import inception_v3

    path = tiny_weights / "pt_inception-test.safetensors"
    plain = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    plain.load_state_dict(load_file(str(path)))
    plain.fc = torch.nn.Identity()
    plain.eval()
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = plain(F.interpolate(images, size=(299, 299), mode="bilinear",
                                  align_corners=False)).double().numpy()
    ours = load_inception(path).features(images)
    assert ours.shape == ref.shape
    # Random weights give tiny activations, so compare relative to their size.
    scale = np.abs(ref).mean()
    assert np.abs(ours - ref).max() > 0.05 * scale
    # Same order of magnitude: the same weights, only the pooling differs.
    assert 0.2 < np.abs(ours).mean() / scale < 5
