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
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig
from starcli.families.stargan_v1.translator import Translator as InferenceModel
from starcli.families.stargan_v1.translator import estimate_labels
from starcli.translate import (
    GRID_DIR,
    GRID_MIN_TILE,
    TranslateConfig,
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
    modules = {"G": G, "D": D if with_d else torch.nn.Module()}
    path = save_checkpoint(run_dir, 7, modules, meta, None, keep_last=1)
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
    k = -(-GRID_MIN_TILE // SIZE)  # small models' tiles are enlarged, nearest neighbour
    assert grid.shape == (SIZE * k, SIZE * 3 * k, 3)
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
    k = -(-GRID_MIN_TILE // SIZE)
    assert read_rgb(tmp_path / "out" / GRID_DIR / "portrait.png").shape == \
        (SIZE * k, 2 * SIZE * k, 3)
    rows = {Path(r["input"]).name: r for r in manifest_rows(result.manifest)}
    assert rows["portrait.png"]["face"]["faces_found"] == 1
    assert "no face found" in rows["wall.png"]["reason"]


def test_paste_back_needs_align():
    with pytest.raises(UsageError, match="--paste-back needs --align"):
        TranslateConfig(inputs=(Path("."),), targets=("Male",), paste_back=True)


# --------------------------------------------------------------------------- per-file failures


def test_jpeg_too_wide_for_its_format_is_skipped_and_the_run_goes_on(tmp_path, ckpt,
                                                                        monkeypatch):
    """A 66000-pixel-wide paste-back result saved as JPEG (at most 65500 pixels a side) was
    an encoder error that ended the run; now that input is skipped with the reason. (OpenCV's
    warp cannot align photos that wide yet, so the paste-back result is widened here.)"""
    import starcli.translate as engine

    src = tmp_path / "in"
    src.mkdir()
    face = drawn_face_photo()
    Image.fromarray(face).save(src / "a-panorama.png")
    Image.fromarray(face[:, :780]).save(src / "b-portrait.png")
    real = engine.paste_back

    def wide_paste_back(original, image, where):
        out = real(original, image, where)
        return np.pad(out, ((0, 0), (0, 66000 - out.shape[1]), (0, 0))) \
            if original.shape[1] == face.shape[1] else out

    monkeypatch.setattr(engine, "paste_back", wide_paste_back)
    result = run(tmp_path, [src], ["Blond_Hair", "Male=flip"], ckpt[0], align=True,
                 paste_back=True, format="jpg")
    assert result.translated == 1 and result.written == 2
    assert read_rgb(tmp_path / "out" / "Male=flip" / "b-portrait.jpg").shape == (600, 780, 3)
    assert not (tmp_path / "out" / "Blond_Hair" / "a-panorama.jpg").exists()
    reason = {Path(s["input"]).name: s["reason"] for s in result.skipped}["a-panorama.png"]
    assert "66000x600" in reason and "65500" in reason and "--format png" in reason


def _fail_for(monkeypatch, name: str, exc: BaseException) -> None:
    """Make writing the outputs of input `name` raise `exc` (other files are written)."""
    import starcli.translate as engine

    real = engine._write_atomic

    def write(path: Path, data: bytes) -> None:
        if path.stem == Path(name).stem:
            raise exc
        real(path, data)

    monkeypatch.setattr(engine, "_write_atomic", write)


def test_a_disk_error_on_one_output_skips_that_input_only(tmp_path, ckpt, monkeypatch):
    import errno

    src = tmp_path / "in"
    write_images(src, 4)
    _fail_for(monkeypatch, "img1", OSError(errno.EIO, "Input/output error"))
    result = run(tmp_path, [src], ["Blond_Hair"], ckpt[0], batch_size=2)
    assert result.translated == 3 and result.written == 3
    assert [Path(s["input"]).name for s in result.skipped] == ["img1.png"]
    assert "OSError" in result.skipped[0]["reason"]
    assert "Input/output error" in result.skipped[0]["reason"]
    rows = {Path(r["input"]).name: r for r in manifest_rows(result.manifest)}
    assert rows["img1.png"]["status"] == "skipped" and rows["img3.png"]["status"] == "translated"
    # The rerun retries exactly the input that failed.
    monkeypatch.undo()
    again = run(tmp_path, [src], ["Blond_Hair"], ckpt[0])
    assert (again.translated, again.existing) == (1, 3)


def test_a_full_disk_stops_the_run_with_one_clear_message(tmp_path, ckpt, monkeypatch):
    """Every later file would fail the same way: stop, keep what was written, and say so."""
    import errno

    src = tmp_path / "in"
    write_images(src, 3)
    _fail_for(monkeypatch, "img1", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StarcliError, match="No space left on device") as err:
        run(tmp_path, [src], ["Blond_Hair"], ckpt[0], batch_size=1, workers=1)
    assert "rerun" in str(err.value)
    statuses = {Path(r["input"]).name: r["status"]
                for r in manifest_rows(tmp_path / "out" / "manifest.jsonl")}
    assert statuses["img0.png"] == "translated" and statuses["img1.png"] != "translated"


def test_an_unexpected_error_decoding_one_file_is_a_skip_naming_it(tmp_path, ckpt,
                                                                     monkeypatch):
    import starcli.translate as engine

    src = tmp_path / "in"
    write_images(src, 3)
    real = engine.load_image

    def load(path, **kw):
        if path.name == "img1.png":
            raise IndexError("tile index out of range")  # e.g. a Pillow plugin bug
        return real(path, **kw)

    monkeypatch.setattr(engine, "load_image", load)
    result = run(tmp_path, [src], ["Blond_Hair"], ckpt[0])
    assert result.translated == 2
    assert result.skipped == [{"input": str(src / "img1.png"),
                               "reason": "could not process it (IndexError: tile index out "
                                         "of range)"}]


def test_a_batch_that_fails_is_retried_one_by_one(tmp_path, ckpt, monkeypatch):
    """One input that breaks the model call must not take its batch-mates with it."""
    src = tmp_path / "in"
    write_images(src, 5)
    import starcli.translate as engine

    real = engine._translate_batch

    def translate_batch(batch, *args):
        if any(job.item.path.name == "img2.png" for job, _ in batch):
            raise RuntimeError("kernel failed on this input")
        return real(batch, *args)

    monkeypatch.setattr(engine, "_translate_batch", translate_batch)
    result = run(tmp_path, [src], ["Blond_Hair"], ckpt[0], batch_size=4)
    assert result.translated == 4
    assert [Path(s["input"]).name for s in result.skipped] == ["img2.png"]
    assert "RuntimeError: kernel failed on this input" in result.skipped[0]["reason"]
    expected = run(tmp_path, [src / "img3.png"], ["Blond_Hair"], ckpt[0], out=tmp_path / "o2")
    assert expected.translated == 1
    assert (read_rgb(tmp_path / "out" / "Blond_Hair" / "img3.png")
            == read_rgb(tmp_path / "o2" / "Blond_Hair" / "img3.png")).all()


# --------------------------------------------------------------------------- manifests


def _bytes_name(folder: Path, name: bytes) -> Path:
    """A file whose name is not valid UTF-8 (Python shows the bytes as surrogates)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_non_utf8_file_names_in_the_manifest(tmp_path, ckpt, kind):
    src = tmp_path / "in"
    write_images(src, 1)
    os.rename(src / "img0.png", _bytes_name(src, b"\xff-face.png"))
    _bytes_name(src, b"caf\xe9.jpg").write_bytes(b"latin-1 named, not an image")
    result = run(tmp_path, [src], ["Blond_Hair"], ckpt[0], manifest=kind)
    assert result.translated == 1
    assert (tmp_path / "out" / "Blond_Hair").iterdir().__next__().name == "\udcff-face.png"
    text = result.manifest.read_bytes().decode("utf-8")  # strict: valid UTF-8 throughout
    if kind == "jsonl":
        rows = {r["relative"]: r for r in map(json.loads, text.splitlines())}
        # No "\udcff" escapes either: strict JSON parsers refuse lone surrogates.
        json.dumps(list(rows.values()), ensure_ascii=False).encode("utf-8")
    else:
        import csv

        rows = {r["relative"]: r for r in csv.DictReader(text.splitlines())}
    # One escape for bytes that are not UTF-8, the same in both manifests and in the result.
    assert rows["\\xff-face.png"]["status"] == "translated"
    assert rows["\\xff-face.png"]["input"] == str(src / "\\xff-face.png")
    assert result.skipped[0]["input"] == str(src / "caf\\xe9.jpg")
    assert "not an image" in result.skipped[0]["reason"]


def test_csv_manifest_neutralises_spreadsheet_formulas(tmp_path, ckpt, monkeypatch):
    import csv

    src = tmp_path / "in"
    src.mkdir()
    names = ['=HYPERLINK("evil.example","x").png', "+1.png", "-1.png", "@SUM(A1).png",
             "\tx.png", "\rx.png", "safe.png"]
    for name in names:
        Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(src / name, format="PNG")
    monkeypatch.chdir(src)  # relative file arguments: the input column starts with them too
    result = run(tmp_path, [Path(n) for n in names], ["Blond_Hair"], ckpt[0], manifest="csv")
    assert result.translated == len(names)
    with open(result.manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(names)
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    row = next(r for r in rows if "HYPERLINK" in r["input"])
    assert row["input"] == "'" + names[0] and row["relative"] == "'" + names[0]
    assert next(r for r in rows if r["relative"] == "safe.png")["input"] == "safe.png"


def test_a_file_name_near_the_length_limit_is_translated(tmp_path, ckpt):
    """255 bytes is the usual limit for one name: the temporary file an output is written
    through must not be longer than the output's own name."""
    src = tmp_path / "in"
    src.mkdir()
    name = "x" * 251 + ".png"
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(src / name)
    result = run(tmp_path, [src], ["Blond_Hair"], ckpt[0])
    assert result.translated == 1 and (tmp_path / "out" / "Blond_Hair" / name).is_file()
    assert [p.name for p in (tmp_path / "out" / "Blond_Hair").iterdir()] == [name]
