"""The translate engine on tiny checkpoints: outputs, labels, resuming, hostile inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from starcli.checkpoint import save_checkpoint
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.errors import CheckpointError, StarcliError, UsageError
from starcli.models.networks import Discriminator, Generator, ModelConfig
from starcli.translate import (
    GRID_DIR,
    InferenceModel,
    TranslateConfig,
    estimate_labels,
    translate,
)

HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair")
CELEBA = LabelSpace("demo-celeba", "celeba", "multilabel", (*HAIR, "Male", "Young"), (HAIR,))
RAFD = LabelSpace("demo-rafd", "rafd", "onehot", ("angry", "happy", "neutral", "sad"))
SIZE = 32


def make_checkpoint(run_dir: Path, layout: LabelLayout, *, seed: int = 0,
                    with_d: bool = True) -> tuple[Path, Generator, Discriminator]:
    cfg = ModelConfig(image_size=SIZE, c_dim=layout.c_dim, cls_dim=layout.cls_dim,
                      g_conv_dim=8, d_conv_dim=8, g_repeat_num=1, d_repeat_num=3)
    torch.manual_seed(seed)
    G, D = Generator(cfg), Discriminator(cfg)
    with torch.no_grad():  # non-trivial norms, so a wrong norm shows
        for p in G.parameters():
            p.normal_(0.0, 0.3)
    meta = {"model": cfg.to_dict(), "labels": layout.to_dict(), "train": {}, "datasets": []}
    if not with_d:
        meta["has_discriminator"] = False
    path = save_checkpoint(run_dir, 7, G, D if with_d else torch.nn.Module(), meta, None,
                           keep_last=1)
    return path, G.eval(), D.eval()


def write_images(folder: Path, n: int, size: tuple[int, int] = (SIZE, SIZE),
                 seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def read_rgb(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def to_x(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1


def to_uint8(y: torch.Tensor) -> np.ndarray:
    return ((y[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "run", LabelLayout((CELEBA,)))


def run(tmp_path, inputs, targets, ckpt_path, **kw) -> object:
    kw.setdefault("precision", "fp32")
    kw.setdefault("out", tmp_path / "out")
    return translate(TranslateConfig(inputs=tuple(inputs), targets=tuple(targets),
                                     checkpoint=ckpt_path, **kw))


def manifest_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- model path


def test_fast_generator_equals_the_module_forward(ckpt):
    _, G, _ = ckpt
    x = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    c = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1], [0, 0, 1, 1, 1]], np.float32)
    with torch.inference_mode():
        ref = G(x, torch.from_numpy(c))
    import copy

    fp32 = InferenceModel(copy.deepcopy(G), None, torch.device("cpu"), "fp32")
    with torch.inference_mode():
        got = fp32.generate(fp32.to_input(((x + 1) * 127.5).round().permute(0, 2, 3, 1)
                                          .to(torch.uint8).numpy()), c)
        exact = fp32.generate(x.contiguous(memory_format=torch.channels_last), c)
    assert torch.allclose(exact.float(), ref, atol=1e-5)
    assert (got.float() - ref).abs().max() < 0.05  # only the uint8 input rounding differs
    bf16 = InferenceModel(copy.deepcopy(G), None, torch.device("cpu"), "bf16")
    with torch.inference_mode():
        low = bf16.generate(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last),
                            c)
    assert (low.float() - ref).abs().mean() < 0.02


def test_label_estimate_thresholds_and_exclusive_groups():
    layout = LabelLayout((CELEBA, RAFD))
    logits = np.array([[2.0, 3.0, -1.0, 0.5, -0.5, 0.1, 0.9, 0.2, 0.3]], np.float32)
    est = estimate_labels(logits, layout)
    assert est[0, :5].tolist() == [0, 1, 0, 1, 0]  # two hair colours > 0: the stronger wins
    assert est[0, 5:].tolist() == [0, 1, 0, 0]  # one-hot: argmax


def test_outputs_equal_G_on_the_centre_crop_with_D_labels(tmp_path, ckpt):
    path, G, D = ckpt
    src = tmp_path / "in"
    src.mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "face.png")
    result = run(tmp_path, [src], ["Blond_Hair", "Male=flip"], path)
    assert result.translated == 1 and result.written == 2
    crop = cv2.resize(rgb[4:44], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    x = to_x(crop)
    with torch.inference_mode():
        logits = D(x)[1].numpy()
        own = estimate_labels(logits, LabelLayout((CELEBA,)))[0]
        blond = own.copy()
        blond[:3] = [0, 1, 0]
        flip = own.copy()
        flip[3] = 1 - flip[3]
        for slug, c in (("Blond_Hair", blond), ("Male=flip", flip)):
            expected = to_uint8(G(x, torch.from_numpy(c)[None]))
            got = read_rgb(tmp_path / "out" / slug / "face.png")
            assert np.abs(got.astype(int) - expected).max() <= 1, slug
    row = manifest_rows(result.manifest)[0]
    assert row["status"] == "translated"
    assert row["outputs"] == {"Blond_Hair": "Blond_Hair/face.png",
                              "Male=flip": "Male=flip/face.png"}
    assert row["source_labels"] == dict(zip(CELEBA.names, map(int, own), strict=True))
    assert row["step"] == 7


def test_relative_paths_grid_jpg_and_csv_manifest(tmp_path, ckpt):
    src = tmp_path / "in"
    write_images(src / "a" / "b", 2)
    write_images(src, 1, size=(50, 30))
    result = run(tmp_path, [src], ["Blond_Hair", "Young=0"], ckpt[0], grid=True,
                 format="jpg", manifest="csv", batch_size=2)
    out = tmp_path / "out"
    assert (out / "Blond_Hair" / "a" / "b" / "img1.jpg").is_file()
    assert (out / "Young=0" / "img0.jpg").is_file()
    grid = read_rgb(out / GRID_DIR / "a" / "b" / "img0.jpg")
    assert grid.shape == (SIZE, SIZE * 3, 3)
    text = result.manifest.read_text().splitlines()
    assert result.manifest.name == "manifest.csv"
    assert text[0].startswith("input,relative,status,reason,target,spec,output")
    assert len(text) == 1 + 3 * 2


def test_rerun_resumes_and_overwrite_redoes(tmp_path, ckpt):
    src = tmp_path / "in"
    write_images(src, 3)
    first = run(tmp_path, [src], ["Blond_Hair"], ckpt[0])
    assert (first.translated, first.written, first.existing) == (3, 3, 0)
    again = run(tmp_path, [src], ["Blond_Hair"], ckpt[0])
    assert (again.translated, again.written, again.existing) == (0, 0, 3)
    assert all(r["status"] == "exists" for r in manifest_rows(again.manifest))
    (tmp_path / "out" / "Blond_Hair" / "img1.png").unlink()
    partial = run(tmp_path, [src], ["Blond_Hair", "Male=0"], ckpt[0])
    assert partial.translated == 3 and partial.written == 4  # img1 + three new Male=0
    redo = run(tmp_path, [src], ["Blond_Hair"], ckpt[0], overwrite=True)
    assert redo.written == 3


def test_hostile_folder_translates_what_it_can(tmp_path, ckpt):
    src = tmp_path / "in"
    write_images(src, 2)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(src / "deep.png")
    (src / "text.jpg").write_text("nope")
    (src / "empty.jpg").write_bytes(b"")
    good = src / "good.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (src / "truncated.jpg").write_bytes(good.read_bytes()[:400])
    os.symlink(".", src / "loop")
    result = run(tmp_path, [src], ["Blond_Hair"], ckpt[0])
    assert result.translated == 5  # two PNGs, CMYK, 16-bit, good.jpg
    reasons = {Path(s["input"]).name: s["reason"] for s in result.skipped}
    assert set(reasons) == {"text.jpg", "empty.jpg", "truncated.jpg", "loop"}
    rows = {Path(r["input"]).name: r for r in manifest_rows(result.manifest)}
    assert rows["text.jpg"]["status"] == "skipped" and "outputs" not in rows["text.jpg"]


def test_nothing_readable_is_exit_1(tmp_path, ckpt):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_text("x")
    with pytest.raises(StarcliError) as err:
        run(tmp_path, [src], ["Blond_Hair"], ckpt[0])
    assert err.value.exit_code == 1 and "manifest" in str(err.value)
    assert (tmp_path / "out" / "manifest.jsonl").is_file()


def test_out_inside_an_input_folder_is_refused(tmp_path, ckpt):
    src = tmp_path / "in"
    write_images(src, 1)
    for out in (src, src / "translated"):
        with pytest.raises(UsageError, match="inside the input folder"):
            run(tmp_path, [src], ["Blond_Hair"], ckpt[0], out=out)


def test_an_output_never_overwrites_an_input(tmp_path, ckpt):
    out = tmp_path / "out"
    inputs = write_images(out / "Blond_Hair", 1)  # translating earlier outputs again
    before = inputs[0].read_bytes()
    with pytest.raises(StarcliError):  # the only input is skipped: nothing translated
        run(tmp_path, [out / "Blond_Hair"], ["Blond_Hair"], ckpt[0], out=out)
    assert inputs[0].read_bytes() == before
    rows = manifest_rows(out / "manifest.jsonl")
    assert "overwrite an input" in rows[0]["reason"]


def test_name_collisions_get_distinct_outputs(tmp_path, ckpt):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(src / "a.jpg")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(src / "a.png")
    result = run(tmp_path, [src], ["Male=0"], ckpt[0])
    names = sorted(p.name for p in (tmp_path / "out" / "Male=0").iterdir())
    assert names == ["a.png", "a.png.png"]  # the first in sorted order keeps the plain name
    outputs = {r["relative"]: r["outputs"]["Male=0"] for r in manifest_rows(result.manifest)}
    assert outputs == {"a.jpg": "Male=0/a.png", "a.png": "Male=0/a.png.png"}


def test_unknown_label_is_a_usage_error_before_any_work(tmp_path, ckpt):
    src = tmp_path / "in"
    write_images(src, 1)
    with pytest.raises(UsageError, match="Did you mean Blond_Hair"):
        run(tmp_path, [src], ["Blonde_Hair"], ckpt[0])
    assert not (tmp_path / "out").exists()


def test_missing_input_and_bad_checkpoint(tmp_path, ckpt):
    with pytest.raises(UsageError, match="does not exist"):
        run(tmp_path, [tmp_path / "nope"], ["Male"], ckpt[0])
    src = tmp_path / "in"
    write_images(src, 1)
    with pytest.raises(CheckpointError):
        run(tmp_path, [src], ["Male"], tmp_path / "no-run")
    (ckpt[0] / "G.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        run(tmp_path, [src], ["Male"], ckpt[0])


def test_checkpoint_without_D_uses_labels_csv(tmp_path):
    path, G, _ = make_checkpoint(tmp_path / "run", LabelLayout((CELEBA,)), with_d=False)
    src = tmp_path / "in"
    imgs = write_images(src, 2)
    with pytest.raises(UsageError, match="no discriminator"):
        run(tmp_path, [src], ["Blond_Hair"], path)
    # A spec that fixes every label needs no estimate.
    full = run(tmp_path, [src], ["Blond_Hair,Male=1,Young=0"], path)
    assert full.translated == 2
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("file,Black_Hair,Blond_Hair,Brown_Hair,Male,Young\n"
                        "img0.png,1,0,0,0,1\n")
    result = run(tmp_path, [src], ["Male=flip"], path, labels=csv_path)
    assert result.translated == 1
    assert "not (fully) in --labels" in result.skipped[0]["reason"]
    with torch.inference_mode():
        expected = to_uint8(G(to_x(read_rgb(imgs[0])),
                              torch.tensor([[1.0, 0, 0, 1, 1]])))
    got = read_rgb(tmp_path / "out" / "Male=flip" / "img0.png")
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_joint_model_alias_note_and_mask(tmp_path):
    layout = LabelLayout((CELEBA, RAFD))
    path, G, _ = make_checkpoint(tmp_path / "run", layout)
    src = tmp_path / "in"
    imgs = write_images(src, 1)
    result = run(tmp_path, [src], ["Smiling"], path)
    assert result.targets[0]["slug"] == "Smiling"
    assert any("demo-rafd:happy" in n for n in result.notes)
    c = torch.zeros(1, layout.c_dim)
    c[0, 5 + 1] = 1  # happy
    c[0, layout.mask_offset + 1] = 1
    with torch.inference_mode():
        expected = to_uint8(G(to_x(read_rgb(imgs[0])), c))
    got = read_rgb(tmp_path / "out" / "Smiling" / "img0.png")
    assert np.abs(got.astype(int) - expected).max() <= 1


def drawn_face_photo() -> np.ndarray:
    """A cartoon face that OpenCV's frontal-face cascade detects (see test_align.py), on a
    larger canvas."""
    img = np.full((400, 400, 3), 90, np.uint8)
    cv2.ellipse(img, (200, 200), (110, 145), 0, 0, 360, (200, 170, 150), -1)
    cv2.ellipse(img, (200, 105), (115, 60), 0, 180, 360, (40, 30, 20), -1)
    for ex in (155, 245):
        cv2.ellipse(img, (ex, 153), (28, 7), 0, 180, 360, (50, 40, 30), -1)
        cv2.ellipse(img, (ex, 175), (22, 11), 0, 0, 360, (245, 245, 245), -1)
        cv2.circle(img, (ex, 175), 9, (40, 30, 20), -1)
    cv2.fillPoly(img, [np.array([[200, 190], [185, 235], [215, 235]])], (170, 140, 120))
    cv2.ellipse(img, (200, 270), (40, 12), 0, 0, 360, (120, 50, 50), -1)
    img = cv2.GaussianBlur(img, (0, 0), 2)
    canvas = np.full((600, 800, 3), 60, np.uint8)
    canvas[100:500, 200:600] = img
    return canvas


def test_align_and_paste_back_keep_the_original_resolution(tmp_path, ckpt):
    src = tmp_path / "in"
    src.mkdir()
    photo = drawn_face_photo()
    Image.fromarray(photo).save(src / "portrait.png")
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(src / "wall.png")
    result = run(tmp_path, [src], ["Blond_Hair"], ckpt[0], align=True, paste_back=True,
                 grid=True)
    out = read_rgb(tmp_path / "out" / "Blond_Hair" / "portrait.png")
    assert out.shape == photo.shape
    assert (out[:30, :30] == photo[:30, :30]).all()  # far from the face: untouched
    assert np.abs(out.astype(int) - photo).max() > 30  # the face was replaced
    assert read_rgb(tmp_path / "out" / GRID_DIR / "portrait.png").shape == (SIZE, 2 * SIZE, 3)
    rows = {Path(r["input"]).name: r for r in manifest_rows(result.manifest)}
    assert rows["portrait.png"]["face"]["faces_found"] == 1
    assert "no face found" in rows["wall.png"]["reason"]


def test_paste_back_needs_align():
    with pytest.raises(UsageError, match="--paste-back needs --align"):
        TranslateConfig(inputs=(Path("."),), targets=("Male",), paste_back=True)
