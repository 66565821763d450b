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


# --------------------------------------------------------------------------- user-file validation

_GOOD = 'title = "t"\naccess = "download"\nformat = "celeba"\n'


def _user_error(tmp_path, text):
    (tmp_path / "datasets.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_registry(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "datasets.toml") in msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("name", ["../../../.bashrc", "a/b", "..", ".", "/etc", "a\\\\b", ""])
def test_dataset_name_must_be_one_path_component(tmp_path, name):
    msg = _user_error(tmp_path, f'["{name}"]\n{_GOOD}')
    assert "dataset name" in msg and "one folder name" in msg


@pytest.mark.parametrize("file_name", ["../evil.txt", "sub/x.txt", "/abs.txt", "..", ""])
def test_file_name_must_be_one_path_component(tmp_path, file_name):
    msg = _user_error(tmp_path, f'[mine]\n{_GOOD}[[mine.files]]\nname = "{file_name}"\n')
    assert "[mine]" in msg and "files[0].name" in msg and "one file name" in msg


@pytest.mark.parametrize("image_dir", ["/home/me/faces", "../faces", "a/b", "..", "."])
def test_image_dir_must_be_one_path_component(tmp_path, image_dir):
    msg = _user_error(tmp_path, f'[mine]\n{_GOOD}image_dir = "{image_dir}"\n')
    assert "[mine]" in msg and "image_dir" in msg


@pytest.mark.parametrize("line, field, words", [
    ('mirrors = "https://m.example/celeba"', "mirrors", "list of strings"),
    ('mirrors = [1, 2]', "mirrors", "list of strings"),
    ("image_count = \"202599\"", "image_count", "integer"),
    ("image_count = true", "image_count", "integer"),
    ("image_count = -3", "image_count", "not negative"),
    ("image_size = [218]", "image_size", "[height, width]"),
    ("title = 5", "title", "string"),
    ("angles = [\"45\"]", "angles", "list of integers"),
    ("attributes = [\"Male\"]", "attributes", "table"),
    ("splits = 3", "splits", "table"),
    ("files = {name = \"x\"}", "files", "list"),
    ("filename_pattern = \"(unclosed\"", "filename_pattern", "regular expression"),
    ("format = [\"celeba\"]", "format", "string"),
])
def test_field_types_are_checked_naming_file_table_and_field(tmp_path, line, field, words):
    body = _GOOD.replace(f"{line.split(' =')[0]} = ", "#") if line.startswith(
        ("title", "format")) else _GOOD
    msg = _user_error(tmp_path, f"[mine]\n{body}{line}\n")
    assert "[mine]" in msg and field in msg and words in msg, msg


@pytest.mark.parametrize("line, field, words", [
    ('size = "12"', "files[0].size", "integer"),
    ('md5 = 5', "files[0].md5", "string"),
    ('sha256 = ["00"]', "files[0].sha256", "string"),
    ('urls = "https://x.example/a.txt"', "files[0].urls", "list of strings"),
    ('kind = "folder"', "files[0].kind", "archive"),
])
def test_file_fields_are_checked(tmp_path, line, field, words):
    msg = _user_error(tmp_path, f'[mine]\n{_GOOD}[[mine.files]]\nname = "a.txt"\n{line}\n')
    assert "[mine]" in msg and field in msg and words in msg, msg


def test_override_of_a_shipped_entry_is_checked_too(tmp_path):
    msg = _user_error(tmp_path, '[celeba]\nmirrors = "https://m.example/celeba"\n')
    assert "[celeba]" in msg and "mirrors" in msg


def test_valid_user_entry_with_every_field_loads(tmp_path):
    (tmp_path / "datasets.toml").write_text(
        f'[mine]\n{_GOOD}image_count = 3\nimage_size = [218, 178]\nimage_dir = "imgs"\n'
        'mirrors = ["https://m.example/mine"]\nangles = [45, 90]\nsplits = { official = {} }\n'
        'filename_pattern = "^x(?P<a>\\\\d)$"\n[mine.attributes]\nnames = ["Male"]\n'
        '[[mine.files]]\nname = "a.zip"\nkind = "archive"\nsize = 10\n'
        f'md5 = "{"a" * 32}"\nsha256 = "{"B" * 64}"\nurls = ["https://x.example/a.zip"]\n')
    spec = load_registry(tmp_path).get("mine")
    assert spec.mirrors == ("https://m.example/mine",) and spec.image_dir == "imgs"
    assert spec.files[0].size == 10 and spec.attributes == ("Male",)
