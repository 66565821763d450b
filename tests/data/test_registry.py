from pathlib import Path

import pytest

from starcli.data.registry import load_registry, shipped_registry_text
from starcli.errors import ConfigError, UnknownDatasetError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_registry_is_the_top_level_file():
    assert shipped_registry_text() == (REPO / "datasets.toml").read_text()


def test_entries_and_facts():
    reg = load_registry(None)
    for name in ("celeba", "rafd", "demo-celeba", "demo-rafd"):
        assert name in reg.datasets
    celeba = reg.get("celeba")
    assert celeba.access == "download" and celeba.format == "celeba"
    assert len(celeba.attributes) == 40
    assert celeba.attributes[8] == "Black_Hair" and celeba.attributes[39] == "Young"
    assert ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair") in celeba.exclusive_groups
    zip_file = next(f for f in celeba.files if f.name == "img_align_celeba.zip")
    assert zip_file.md5 == "00d2c5bc6d35e252742224ab0c1e8fcb"
    assert zip_file.size == 1443490838 and zip_file.kind == "archive"
    assert celeba.image_count == 202599
    rafd = reg.get("rafd")
    assert rafd.access == "request" and len(rafd.expressions) == 8
    assert rafd.filename_regex.match("Rafd090_07_Caucasian_female_happy_frontal.jpg")
    assert ("celeba:Smiling", "rafd:happy") in reg.aliases
    assert reg.get("demo-celeba").access == "synthetic"


def test_unknown_name_suggests():
    with pytest.raises(UnknownDatasetError, match="Did you mean celeba"):
        load_registry(None).get("celbea")


def test_user_registry_extends_and_overrides(tmp_path):
    (tmp_path / "datasets.toml").write_text(
        'aliases = [["celeba:Male", "rafd:male"]]\n'
        '[celeba]\nmirrors = ["http://127.0.0.1:9/celeba"]\n'
        '[mine]\ntitle = "My faces"\naccess = "download"\nformat = "celeba"\n'
        '[[mine.files]]\nname = "list_attr_celeba.txt"\nmd5 = "abc"\n')
    reg = load_registry(tmp_path)
    assert reg.get("celeba").mirrors == ("http://127.0.0.1:9/celeba",)
    assert len(reg.get("celeba").files) == 6  # untouched fields survive
    assert reg.get("mine").files[0].md5 == "abc"
    assert ("celeba:Smiling", "rafd:happy") in reg.aliases
    assert ("celeba:Male", "rafd:male") in reg.aliases


def test_user_registry_errors_name_the_file(tmp_path):
    (tmp_path / "datasets.toml").write_text("[broken\n")
    with pytest.raises(ConfigError, match="datasets.toml"):
        load_registry(tmp_path)
    (tmp_path / "datasets.toml").write_text('[x]\ntitle="x"\naccess="ftp"\nformat="celeba"\n')
    with pytest.raises(ConfigError, match="access must be one of"):
        load_registry(tmp_path)
