"""`starcli datasets` engine: listing raw and prepared datasets, showing one, contact sheets."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from starcli.data import synthetic
from starcli.data.catalog import GRID_MIN_TILE, GRID_PAD, list_datasets, show_dataset
from starcli.data.prepare import PrepareConfig, prepare
from starcli.errors import DatasetNotFoundError, UnknownDatasetError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """demo-celeba (40 faces) prepared at 64 px and demo-rafd (2 subjects) at 32 px."""
    home = tmp_path_factory.mktemp("catalog")
    synthetic.generate_celeba(home / "raw" / "demo-celeba", count=40)
    synthetic.generate_rafd(home / "raw" / "demo-rafd", subjects=2, angles=(90,))
    (home / "raw" / "demo-celeba" / "img_align_celeba" / "000007.jpg").write_bytes(b"bad")
    prepare(PrepareConfig(home=home, dataset="demo-celeba", size=64,
                          attrs=("Black_Hair", "Blond_Hair", "Male", "Smiling")))
    prepare(PrepareConfig(home=home, dataset="demo-rafd", size=32))
    return home


def test_list_shows_registry_entries_raw_files_and_prepared_sizes(data, tmp_path):
    src = tmp_path / "mine"
    for d in ("a", "b"):
        (src / d).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20)).save(src / d / f"{i}.png")
    prepare(PrepareConfig(home=data, dataset="myfaces", source=src, size=16))
    try:
        entries = {e["name"]: e for e in list_datasets(data)}
    finally:  # the module fixture is shared: leave it as it was
        shutil.rmtree(data / "prepared" / "myfaces")
    assert {"celeba", "rafd", "demo-celeba", "demo-rafd", "myfaces"} <= set(entries)
    celeba = entries["celeba"]
    assert celeba["access"] == "download" and celeba["format"] == "celeba"
    assert celeba["raw"]["present"] is False and celeba["prepared"] == []
    demo = entries["demo-celeba"]
    assert demo["raw"]["present"] and demo["raw"]["files"] >= 40 + 3
    assert demo["raw"]["bytes"] > 40 * 1000
    (prep,) = demo["prepared"]
    assert prep["size"] == 64 and prep["complete"] and prep["images"] == 39
    assert sum(prep["splits"].values()) == 39 and prep["skipped"] == 1
    assert prep["label_names"] == ["Black_Hair", "Blond_Hair", "Male", "Smiling"]
    assert prep["label_kind"] == "multilabel" and prep["bytes"] > 39 * 64 * 64 * 3
    rafd = entries["demo-rafd"]["prepared"][0]
    assert rafd["label_kind"] == "onehot" and rafd["images"] == 2 * 8 * 3
    mine = entries["myfaces"]
    assert not mine["in_registry"] and mine["access"] == "local" and mine["format"] == "folder"
    assert mine["raw"]["files"] == 6 and mine["prepared"][0]["label_names"] == ["a", "b"]


def test_show_gives_registry_info_manifest_and_skipped(data):
    info = show_dataset(data, "demo-celeba")
    assert info["registry"]["format"] == "celeba" and len(info["registry"]["attributes"]) == 40
    (prep,) = info["prepared"]
    assert prep["label_table"]["space"]["names"] == ["Black_Hair", "Blond_Hair", "Male",
                                                     "Smiling"]
    assert prep["skipped_examples"] == [{"file": "000007.jpg",
                                         "reason": "not an image (unknown format)"}]
    assert prep["skipped_reasons"] == {"not an image (unknown format)": 1}
    assert "grid" not in info
    json.dumps(info)  # the CLI prints it with --json
    with pytest.raises(UnknownDatasetError, match="Did you mean demo-celeba"):
        show_dataset(data, "demo-celba")


def test_grid_contact_sheet_has_the_expected_size_and_labels(data, tmp_path):
    out = tmp_path / "sheets" / "celeba.png"
    info = show_dataset(data, "demo-celeba", grid=out)["grid"]
    assert info["samples"] == 16 and info["image_size"] == 64
    tile = 2 * 64  # 64 px images are doubled to reach GRID_MIN_TILE
    assert tile >= GRID_MIN_TILE
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (info["width"], info["height"])
        assert im.width == 4 * tile + 5 * GRID_PAD
        assert im.height > 4 * (tile + GRID_PAD)  # label bands under each row
    allowed = {"Black_Hair", "Blond_Hair", "Male", "Smiling", "(none)"}
    assert all(set(label.split(", ")) <= allowed for label in info["labels"])
    assert not list(out.parent.glob("*.tmp"))

    rafd = show_dataset(data, "demo-rafd", grid=tmp_path / "rafd.png", size=32)["grid"]
    expressions = set(synthetic.RAFD_EXPRESSIONS)
    assert rafd["samples"] == 16 and set(rafd["labels"]) <= expressions
    with Image.open(tmp_path / "rafd.png") as im:
        assert im.width == 4 * 128 + 5 * GRID_PAD  # 32 px scaled x4


def test_grid_needs_a_prepared_copy(data, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="starcli prepare celeba"):
        show_dataset(data, "celeba", grid=tmp_path / "x.png")
    with pytest.raises(DatasetNotFoundError, match="--size 128"):
        show_dataset(data, "demo-celeba", grid=tmp_path / "x.png", size=128)
    assert not (tmp_path / "x.png").exists()


def test_prepared_sizes_lists_sizes_with_a_manifest_only(data, tmp_path):
    from starcli.data.dataset import prepared_sizes

    assert prepared_sizes(data, "demo-celeba") == [64]
    assert prepared_sizes(data, "demo-rafd") == [32]
    assert prepared_sizes(data, "nothing-here") == []
    home = tmp_path / "home"
    shutil.copytree(data / "prepared" / "demo-rafd", home / "prepared" / "demo-rafd" / "128")
    shutil.copytree(data / "prepared" / "demo-rafd" / "32", home / "prepared" / "demo-rafd" / "16")
    (home / "prepared" / "demo-rafd" / "128" / "32" / "manifest.json").unlink()
    (home / "prepared" / "demo-rafd" / "notes").mkdir()
    # 128/ holds a size folder, not a manifest: unfinished, so not listed. Sorted as numbers.
    assert prepared_sizes(str(home), "demo-rafd") == [16]
    shutil.copy(data / "prepared" / "demo-rafd" / "32" / "manifest.json",
                home / "prepared" / "demo-rafd" / "128" / "manifest.json")
    assert prepared_sizes(home, "demo-rafd") == [16, 128]
