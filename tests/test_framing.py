"""The preparation recipe travels with the model: raw files are framed as in training.

A model trained on `prepare --crop 150` of 178x218 CelebA-format files must see, when a user
hands translate those same raw files, the pixels it was trained on; likewise RaFD-format files
with their own crop. The recipe sits in the manifest and in every checkpoint's meta.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from starcli.align import CELEBA_EYES, celeba_eyes
from starcli.config import TrainConfig
from starcli.data.dataset import iterate_split, open_prepared
from starcli.data.prepare import PrepareConfig, prepare
from starcli.data.synthetic import generate_celeba, generate_rafd
from starcli.imaging import Framing, Framings
from starcli.translate import TranslateConfig, translate

SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """demo-celeba (crop 150) and demo-rafd (crop 200) prepared at 32 px from raw files."""
    home = tmp_path_factory.mktemp("home")
    generate_celeba(home / "raw" / "demo-celeba", count=60)
    generate_rafd(home / "raw" / "demo-rafd", subjects=2, angles=(90,))
    prepare(PrepareConfig(home=home, dataset="demo-celeba", size=SIZE, crop=150,
                          attrs=("Black_Hair", "Blond_Hair", "Male")))
    prepare(PrepareConfig(home=home, dataset="demo-rafd", size=SIZE, crop=200))
    return home


def _raw_and_prepared(home: Path, name: str, folder: str = ""):
    ds = open_prepared(home, name, SIZE)
    images = np.concatenate([b[0] for b in iterate_split(ds, "test", batch_size=256)])
    names = ds.source_names("test")
    assert len(names) == len(images) > 0
    return ds, [home / "raw" / name / folder / n for n in names], images


def test_the_manifest_records_the_recipe(data):
    celeba = open_prepared(data, "demo-celeba", SIZE).manifest["framing"]
    assert celeba == {"dataset": "demo-celeba", "format": "celeba", "source": [178, 218],
                      "crop": 150, "size": SIZE, "resize": "area"}
    rafd = Framing.from_dict(open_prepared(data, "demo-rafd", SIZE).manifest["framing"])
    assert (rafd.source, rafd.crop, rafd.format) == ((256, 320), 200, "rafd")
    assert rafd.fits(256, 320) and rafd.fits(512, 640) and not rafd.fits(178, 218)


@pytest.mark.parametrize("name,folder", [("demo-celeba", "img_align_celeba"),
                                         ("demo-rafd", "")])
def test_raw_files_give_the_prepared_pixels(data, name, folder):
    ds, paths, images = _raw_and_prepared(data, name, folder)
    framings = Framings([Framing.from_dict(ds.manifest["framing"])], SIZE)
    for path, want in zip(paths, images, strict=True):
        got, how = framings.load(path)
        assert f"centre {ds.manifest['crop']}px square" in how
        # The same decoder and resize as prepare: equal up to the JPEG decoder's rounding.
        assert np.abs(got.astype(int) - want).max() <= 2, path.name
    # The largest centre square (what translate did before) is a different picture.
    plain = Framings([], SIZE)
    got, how = plain.load(paths[0])
    assert how == "largest centre square"
    assert np.abs(got.astype(float) - images[0]).mean() > 8


def test_a_file_at_twice_the_size_gets_the_same_framing(data, tmp_path):
    ds, paths, images = _raw_and_prepared(data, "demo-celeba", "img_align_celeba")
    framings = Framings([Framing.from_dict(ds.manifest["framing"])], SIZE)
    big = tmp_path / "big.png"
    with Image.open(paths[0]) as im:
        im.convert("RGB").resize((356, 436), Image.LANCZOS).save(big)
    got, how = framings.load(big)
    assert "demo-celeba" in how
    assert np.abs(got.astype(float) - images[0]).mean() < 3


def test_crop_overrides_the_recipe(data):
    ds, paths, _ = _raw_and_prepared(data, "demo-celeba", "img_align_celeba")
    recipe = Framing.from_dict(ds.manifest["framing"])
    a, _ = Framings([recipe], SIZE, crop=178).load(paths[0])
    b, how = Framings([], SIZE).load(paths[0])  # 178 = the short side: the largest square
    assert how == "largest centre square"
    assert np.abs(a.astype(int) - b).max() <= 1


def test_align_targets_the_recipe_inside_the_celeba_frame():
    # Cutting 150 of the 178 square: the eyes move apart and outwards by 178/150.
    (lx, ly), (rx, ry) = celeba_eyes(150 / 178)
    (x0, y0), (x1, _) = CELEBA_EYES
    assert (rx - lx) == pytest.approx((x1 - x0) * 178 / 150)
    assert (lx + rx) / 2 == pytest.approx(0.5 + ((x0 + x1) / 2 - 0.5) * 178 / 150)
    assert ly == ry == pytest.approx(0.5 + (y0 - 0.5) * 178 / 150)
    assert np.allclose(celeba_eyes(1.0), CELEBA_EYES)


def test_a_model_trained_on_crop_150_translates_raw_files_as_its_test_pixels(
        data, tmp_path, monkeypatch):
    """Raw CelebA- and RaFD-format files through translate equal G on the prepared test
    pixels; the checkpoint alone carries the recipes."""
    from starcli.checkpoint import load_checkpoint, read_meta
    from starcli.engine import train
    from starcli.families import get_family

    monkeypatch.chdir(tmp_path)
    result = train(TrainConfig.from_preset(
        "tiny", datasets=("demo-celeba", "demo-rafd"), joint=True, home=str(data),
        device="cpu", precision="fp32", run_dir=str(tmp_path / "run"), iters=2,
        save_every=2, sample_every=0, log_every=1))
    meta = read_meta(Path(result["checkpoint"]))
    crops = {d["name"]: d["framing"]["crop"] for d in meta["datasets"]}
    assert crops == {"demo-celeba": 150, "demo-rafd": 200}

    _, celeba_paths, celeba_px = _raw_and_prepared(data, "demo-celeba", "img_align_celeba")
    _, rafd_paths, rafd_px = _raw_and_prepared(data, "demo-rafd")
    faces = tmp_path / "faces"
    faces.mkdir()
    picked = [(celeba_paths[0], celeba_px[0]), (rafd_paths[0], rafd_px[0])]
    for path, _ in picked:
        (faces / path.name).write_bytes(path.read_bytes())
    spec = "Blond_Hair=1,Black_Hair=0,Male=1"  # every CelebA label named: no D estimate
    out = tmp_path / "out"
    done = translate(TranslateConfig(inputs=(faces,), targets=(spec,),
                                     checkpoint=Path(result["run_dir"]), out=out,
                                     precision="fp32", device="cpu"))
    assert done.translated == 2
    rows = {Path(r["input"]).name: r for r in
            map(json.loads, done.manifest.read_text().splitlines())}

    ckpt = load_checkpoint(Path(result["checkpoint"]), device=torch.device("cpu"))
    model = get_family(ckpt.family).translator(ckpt, torch.device("cpu"), "fp32")
    from starcli.targets import parse_targets

    target = parse_targets((spec,), ckpt.layout)[0]
    for path, pixels in picked:
        row = rows[path.name]
        name = "demo-celeba" if path.name.endswith(".jpg") and "Rafd" not in path.name \
            else "demo-rafd"
        assert row["framing"].startswith(name), row["framing"]
        source = np.zeros((1, ckpt.layout.cls_dim), np.float32)
        with torch.inference_mode():
            x = model.to_input(pixels[None])
            want = model.to_uint8(model.generate(x, target.encode(ckpt.layout, source)))[0]
        got = np.asarray(Image.open(out / row["outputs"][target.slug]).convert("RGB"))
        assert np.abs(got.astype(float) - want).mean() < 2.0, path.name
