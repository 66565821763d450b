"""The built-in synthetic sets: formats, determinism, resume, and that the drawn attributes are
learnable at the demo's resolution (but not from the mean colour alone)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from starcli.data.celeba_attrs import CELEBA_ATTRIBUTES, HAIR_COLOURS
from starcli.data.synthetic import (
    CELEBA_SIZE,
    MARKER,
    RAFD_EXPRESSIONS,
    RAFD_GAZES,
    RAFD_SIZE,
    RENDERED_ATTRIBUTES,
    celeba_split_sizes,
    generate_celeba,
    generate_rafd,
)
from starcli.errors import UsageError

RAFD_RE = re.compile(
    r"^Rafd(?P<angle>\d{3})_(?P<subject>\d+)_(?P<ethnicity>[A-Za-z]+)_(?P<gender>[a-z]+)"
    r"_(?P<expression>[a-z]+)_(?P<gaze>[a-z]+)\.jpg$")
LANDMARK_HEADER = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x "
                   "leftmouth_y rightmouth_x rightmouth_y")


def read_attrs(root: Path) -> tuple[list[str], np.ndarray]:
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    assert int(lines[0]) == len(lines) - 2
    assert tuple(lines[1].split()) == CELEBA_ATTRIBUTES
    rows = [line.split() for line in lines[2:]]
    return [r[0] for r in rows], np.array([[int(v) for v in r[1:]] for r in rows])


def files_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != MARKER}


# --------------------------------------------------------------------------------------------
# CelebA format


@pytest.fixture(scope="module")
def celeba60(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("celeba") / "demo-celeba"
    summary = generate_celeba(root, count=60, seed=3)
    assert summary["images"] == 60 and summary["root"] == str(root)
    assert summary["images_per_s"] > 0
    return root


def test_celeba_attribute_file(celeba60: Path) -> None:
    names, values = read_attrs(celeba60)
    assert names == [f"{i:06d}.jpg" for i in range(1, 61)]
    assert values.shape == (60, 40) and set(np.unique(values)) == {-1, 1}
    hair = values[:, [CELEBA_ATTRIBUTES.index(h) for h in HAIR_COLOURS]]
    assert ((hair == 1).sum(axis=1) == 1).all()
    # Mimics the real file: a positive value is padded to the width of "-1".
    line = (celeba60 / "list_attr_celeba.txt").read_text().splitlines()[2]
    assert re.fullmatch(r"\d{6}\.jpg( -1|  1){40}", line)


def test_celeba_images_and_landmarks(celeba60: Path) -> None:
    images = sorted((celeba60 / "img_align_celeba").iterdir())
    assert [p.name for p in images] == [f"{i:06d}.jpg" for i in range(1, 61)]
    with Image.open(images[0]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == CELEBA_SIZE
    lines = (celeba60 / "list_landmarks_align_celeba.txt").read_text().splitlines()
    assert lines[0] == "60" and lines[1] == LANDMARK_HEADER
    xy = np.array([[int(v) for v in line.split()[1:]] for line in lines[2:]])
    assert xy.shape == (60, 10)
    assert (xy[:, 0] < xy[:, 2]).all() and (xy[:, 6] < xy[:, 8]).all()  # left is image-left
    assert (xy[:, 1] < xy[:, 5]).all() and (xy[:, 5] < xy[:, 7]).all()  # eyes, nose, mouth


def test_celeba_partition_file(celeba60: Path) -> None:
    raw = (celeba60 / "list_eval_partition.txt").read_bytes()
    assert raw.count(b"\r\n") == 60 and raw.count(b"\n") == 60
    splits = [int(line.split()[1]) for line in raw.decode().splitlines()]
    assert splits == sorted(splits) and set(splits) == {0, 1, 2}  # contiguous, like the original
    assert celeba_split_sizes(202_599) == (162_770, 19_867, 19_962)


def test_celeba_priors_balanced(tmp_path: Path) -> None:
    from starcli.data.synthetic import celeba_sample

    rows = np.array([[celeba_sample(0, i)[0][n] for n in RENDERED_ATTRIBUTES]
                     for i in range(1, 601)])
    share = (rows == 1).mean(axis=0)
    assert all(0.17 < s < 0.33 for s in share[:4]), share
    assert all(0.3 < s < 0.7 for s in share[4:]), share


def test_celeba_deterministic_and_parallel(tmp_path: Path) -> None:
    a = generate_celeba(tmp_path / "a", count=40, seed=1)
    generate_celeba(tmp_path / "b", count=40, seed=1, workers=2)
    generate_celeba(tmp_path / "c", count=40, seed=2)
    assert a["rendered"] == 40
    for sub in (".", "img_align_celeba"):
        assert files_bytes(tmp_path / "a" / sub) == files_bytes(tmp_path / "b" / sub)
    assert (tmp_path / "a/list_attr_celeba.txt").read_bytes() != (
        tmp_path / "c/list_attr_celeba.txt").read_bytes()
    assert (tmp_path / "a/img_align_celeba/000001.jpg").read_bytes() != (
        tmp_path / "c/img_align_celeba/000001.jpg").read_bytes()


def test_celeba_resume_and_regenerate(tmp_path: Path) -> None:
    root = tmp_path / "c"
    generate_celeba(root, count=30, seed=0)
    reference = files_bytes(root / "img_align_celeba")
    # An interrupted run: some images missing, a temp file left behind, no complete marker.
    (root / "img_align_celeba/000007.jpg").unlink()
    (root / "img_align_celeba/.000008.jpg.tmp").write_bytes(b"partial")
    summary = generate_celeba(root, count=30, seed=0)
    assert summary["rendered"] == 1
    assert files_bytes(root / "img_align_celeba") == reference
    # Other parameters: everything is redrawn and images beyond the new count go away.
    generate_celeba(root, count=20, seed=0)
    _, values = read_attrs(root)
    assert len(values) == 20 and len(list((root / "img_align_celeba").iterdir())) == 20
    assert files_bytes(root / "img_align_celeba") == {
        k: v for k, v in reference.items() if int(k[:6]) <= 20}


def test_refuses_foreign_folder_and_bad_args(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real/list_attr_celeba.txt").write_text("202599\n")
    with pytest.raises(UsageError, match="did not generate"):
        generate_celeba(tmp_path / "real", count=5)
    with pytest.raises(UsageError):
        generate_celeba(tmp_path / "x", count=0)
    with pytest.raises(UsageError):
        generate_rafd(tmp_path / "y", angles=(30,))


# --------------------------------------------------------------------------------------------
# RaFD format


def test_rafd_names_and_counts(tmp_path: Path) -> None:
    root = tmp_path / "rafd"
    summary = generate_rafd(root, subjects=3, angles=(45, 90, 135))
    names = sorted(p.name for p in root.iterdir() if p.name != MARKER)
    assert summary["images"] == len(names) == 3 * 8 * 3 * 3
    parsed = [RAFD_RE.match(n) for n in names]
    assert all(parsed)
    assert {m["expression"] for m in parsed} == set(RAFD_EXPRESSIONS)
    assert {m["gaze"] for m in parsed} == set(RAFD_GAZES)
    assert {m["angle"] for m in parsed} == {"045", "090", "135"}
    assert {m["ethnicity"] for m in parsed} <= {"Caucasian", "Moroccan"}
    assert {m["gender"] for m in parsed} <= {"female", "male"}
    # One identity per subject number, whatever the pose.
    assert len({(m["subject"], m["ethnicity"], m["gender"]) for m in parsed}) == 3
    with Image.open(root / names[0]) as im:
        assert im.size == RAFD_SIZE and im.mode == "RGB"


def test_rafd_deterministic_and_parallel(tmp_path: Path) -> None:
    generate_rafd(tmp_path / "a", subjects=2, angles=(90,), seed=5)
    generate_rafd(tmp_path / "b", subjects=2, angles=(90,), seed=5, workers=2)
    generate_rafd(tmp_path / "c", subjects=2, angles=(90,), seed=6)
    a, b, c = (files_bytes(tmp_path / k) for k in "abc")
    assert a == b and len(a) == 48
    assert a != c


# --------------------------------------------------------------------------------------------
# Learnability


def _load(paths: list[Path], box: tuple[int, int, int, int]):
    import torch

    arr = np.stack([np.asarray(Image.open(p).convert("RGB").crop(box).resize(
        (64, 64), Image.BILINEAR)) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _small_cnn(n_out: int):
    from torch import nn

    def block(cin: int, cout: int, k: int) -> list:
        return [nn.Conv2d(cin, cout, k, 2, k // 2), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16, 5), *block(16, 32, 3), *block(32, 64, 3),
                         *block(64, 64, 3), nn.Flatten(), nn.Linear(64 * 16, n_out))


@pytest.fixture
def one_thread():
    # One thread: on a busy 2-core machine two spinning OpenMP threads run ~7x slower.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(x, loss_fn, n_out: int, epochs: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    net = _small_cnn(n_out)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    batches = len(x) // 64  # full batches only: one shape, no extra kernel set-up
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * batches)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen)[:batches * 64].view(batches, 64):
            opt.zero_grad()
            loss_fn(net(x[idx]), idx).backward()
            opt.step()
            sched.step()
    return net.eval()


def _mean_colour_accuracy(x_train, y_train, x_test, y_test) -> float:
    """Held-out accuracy of a logistic regression on the mean RGB of each image."""
    import torch

    def feats(x):
        return x.mean(dim=(2, 3))

    f_train, f_test = feats(x_train), feats(x_test)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    w = torch.zeros(3, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(f_train @ w + b, y_train)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((f_test @ w + b > 0).float() == y_test).float().mean())


def celeba_accuracies(tmp_path: Path, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Held-out accuracy of a small CNN per drawn attribute (hair colour as one 4-way task),
    and of a mean-colour logistic regression for the binary ones."""
    import torch
    from torch.nn import functional as F

    n_train, n_test = 1500, 300
    root = tmp_path / "celeba"
    generate_celeba(root, count=n_train + n_test, seed=seed)
    names, values = read_attrs(root)
    x = _load([root / "img_align_celeba" / n for n in names], (0, 20, 178, 198))
    hair = torch.from_numpy(values[:, [CELEBA_ATTRIBUTES.index(h) for h in HAIR_COLOURS]]
                            .argmax(axis=1))
    binary = [a for a in RENDERED_ATTRIBUTES if a not in HAIR_COLOURS]
    y = torch.from_numpy((values[:, [CELEBA_ATTRIBUTES.index(a) for a in binary]] + 1) // 2).float()

    def loss_fn(out, idx):
        return F.cross_entropy(out[:, :4], hair[idx]) + F.binary_cross_entropy_with_logits(
            out[:, 4:], y[idx])

    net = _train(x[:n_train], loss_fn, 4 + len(binary), epochs=10)
    with torch.no_grad():
        out = net(x[n_train:])
    cnn = {"hair": float((out[:, :4].argmax(1) == hair[n_train:]).float().mean())}
    cnn |= {a: float(((out[:, 4 + k] > 0).float() == y[n_train:, k]).float().mean())
            for k, a in enumerate(binary)}
    base = {a: _mean_colour_accuracy(x[:n_train], y[:n_train, k], x[n_train:], y[n_train:, k])
            for k, a in enumerate(binary)}
    return cnn, base


@pytest.mark.slow
def test_rendered_attributes_are_learnable(tmp_path: Path, one_thread) -> None:
    cnn, base = celeba_accuracies(tmp_path, seed=11)
    print("held-out accuracy", cnn, "mean-colour baseline", base)
    assert all(v >= 0.97 for v in cnn.values()), cnn
    # Not trivial: the mean colour alone does not give these away.
    assert all(base[a] < 0.9 for a in ("Male", "Young", "Smiling")), base


@pytest.mark.slow
def test_rafd_expressions_are_learnable(tmp_path: Path, one_thread) -> None:
    import torch
    from torch.nn import functional as F

    root = tmp_path / "rafd"
    generate_rafd(root, subjects=24, seed=4)
    paths = sorted(p for p in root.iterdir() if p.suffix == ".jpg")
    subject = np.array([int(RAFD_RE.match(p.name)["subject"]) for p in paths])
    label = torch.tensor([RAFD_EXPRESSIONS.index(RAFD_RE.match(p.name)["expression"])
                          for p in paths])
    x = _load(paths, (0, 32, 256, 288))
    train, test = torch.from_numpy(subject <= 20), torch.from_numpy(subject > 20)  # unseen people
    net = _train(x[train], lambda out, idx: F.cross_entropy(out, label[train][idx]), 8, epochs=10)
    with torch.no_grad():
        acc = float((net(x[test]).argmax(1) == label[test]).float().mean())
    print("rafd expression accuracy", acc)
    assert acc >= 0.97, acc
