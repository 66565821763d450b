"""`--to` specs on a label table: assignments, exclusive groups, one-hot, aliases, errors."""

from __future__ import annotations

import numpy as np
import pytest

from starcli.data.labels import LabelLayout, LabelSpace
from starcli.errors import UsageError
from starcli.targets import parse_target, parse_targets, read_labels_csv

HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
CELEBA = LabelSpace("demo-celeba", "celeba", "multilabel", (*HAIR, "Male", "Young"), (HAIR,))
RAFD = LabelSpace("demo-rafd", "rafd", "onehot",
                  ("angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad",
                   "surprised"))
SINGLE = LabelLayout((CELEBA,))
JOINT = LabelLayout((CELEBA, RAFD))
REGISTRY_ALIASES = (("celeba:Smiling", "rafd:happy"),)

# Input labels: Black_Hair, Male, not Young; and a blond young woman.
SOURCE = np.array([[1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1]], np.float32)


def _joint_source() -> np.ndarray:
    return np.concatenate([SOURCE, np.zeros((2, 8), np.float32)], axis=1)


def test_hair_colour_on_turns_its_group_off_and_keeps_the_rest():
    t = parse_target("Blond_Hair", SINGLE)
    c = t.encode(SINGLE, SOURCE)
    assert c.tolist() == [[0, 1, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1]]
    assert t.slug == "Blond_Hair" and t.needs_source(SINGLE)


def test_off_and_flip():
    c = parse_target("Male=0, Young=flip", SINGLE).encode(SINGLE, SOURCE)
    assert c.tolist() == [[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0]]


def test_flip_of_a_hair_colour_turns_partners_off_only_where_it_turned_on():
    c = parse_target("Brown_Hair=flip", SINGLE).encode(SINGLE, np.array(
        [[1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]], np.float32))
    assert c.tolist() == [[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]


def test_onehot_label_sets_space_and_mask():
    t = parse_target("happy", JOINT)
    c = t.encode(JOINT, _joint_source())
    assert c.shape == (2, JOINT.c_dim)
    assert c[0, :6].tolist() == [0] * 6  # the CelebA block is empty
    assert c[0, 6:14].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert c[0, 14:].tolist() == [0, 1]  # mask: the RaFD space
    assert not t.needs_source(JOINT)


def test_celeba_target_on_joint_model_uses_celeba_mask():
    c = parse_target("Blond_Hair", JOINT).encode(JOINT, _joint_source())
    assert c[0, :6].tolist() == [0, 1, 0, 0, 1, 0] and c[0, 14:].tolist() == [1, 0]


def test_spec_that_fixes_every_label_needs_no_source():
    t = parse_target("Blond_Hair,Male=1,Young=0", SINGLE)
    assert not t.needs_source(SINGLE)
    nan = np.full((1, 6), np.nan, np.float32)
    assert t.encode(SINGLE, nan).tolist() == [[0, 1, 0, 0, 1, 0]]


def test_qualified_and_case_insensitive_names():
    assert parse_target("demo-rafd:happy", JOINT).assignments[0].name == "happy"
    assert parse_target("rafd:happy", JOINT).assignments[0].space == 1  # by format
    t = parse_target("blond_hair", SINGLE)
    assert t.assignments[0].name == "Blond_Hair" and t.slug == "Blond_Hair"


def test_alias_resolves_to_the_other_space_with_a_note():
    t = parse_target("Smiling", JOINT, aliases=REGISTRY_ALIASES)
    a = t.assignments[0]
    assert (a.space, a.name) == (1, "happy")
    assert t.notes and "demo-rafd:happy" in t.notes[0]
    assert t.slug == "Smiling"  # the folder the user asked for


def test_checkpoint_aliases_work_without_the_registry():
    layout = LabelLayout((CELEBA, RAFD), aliases=(("demo-celeba:Smiling", "demo-rafd:happy"),))
    assert parse_target("Smiling", layout).assignments[0].name == "happy"


def test_alias_in_the_other_direction():
    with_smiling = LabelSpace("demo-celeba", "celeba", "multilabel", ("Smiling", "Male"))
    layout = LabelLayout((with_smiling,))
    a = parse_target("happy", layout, aliases=REGISTRY_ALIASES).assignments[0]
    assert a.name == "Smiling" and a.value == "on"


def test_a_real_column_wins_over_an_alias():
    with_smiling = LabelSpace("demo-celeba", "celeba", "multilabel", ("Smiling", "Male"))
    layout = LabelLayout((with_smiling, RAFD))
    t = parse_target("Smiling", layout, aliases=REGISTRY_ALIASES)
    assert t.assignments[0].space == 0 and not t.notes


def test_unknown_label_lists_labels_with_did_you_mean():
    with pytest.raises(UsageError) as err:
        parse_target("Blonde_Hair", JOINT)
    msg = str(err.value)
    assert err.value.exit_code == 2
    assert "Did you mean Blond_Hair?" in msg
    assert "demo-celeba: Black_Hair, Blond_Hair" in msg and "demo-rafd: angry" in msg


@pytest.mark.parametrize("spec, fragment", [
    ("Blond_Hair,happy", "mixes labels from 2 label spaces"),
    ("happy=0", "one-hot"),
    ("happy=flip", "one-hot"),
    ("happy,sad", "only one can be on"),
    ("Blond_Hair,Black_Hair", "exclusive group"),
    ("Male=1,Male=0", "set twice"),
    ("Male=maybe", "unknown value"),
    ("nowhere:Male", "not a label space"),
    ("", "at least one label"),
])
def test_refused_specs(spec, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_target(spec, JOINT)


def test_mixing_spaces_when_allowed_sets_both_masks():
    t = parse_target("Blond_Hair,happy", JOINT, mix_label_spaces=True)
    c = t.encode(JOINT, _joint_source())
    assert c[0, 14:].tolist() == [1, 1] and c[0, 1] == 1 and c[0, 10] == 1


def test_ambiguous_name_must_be_qualified():
    other = LabelSpace("faces", "folder", "multilabel", ("Male", "Glasses"))
    layout = LabelLayout((CELEBA, other))
    with pytest.raises(UsageError, match="several label spaces"):
        parse_target("Male", layout)
    assert parse_target("faces:Male", layout).assignments[0].space == 1


def test_duplicate_specs_share_a_folder_once():
    targets = parse_targets(["Blond_Hair", "blond_hair", "Male=0"], SINGLE)
    assert [t.slug for t in targets] == ["Blond_Hair", "Male=0"]
    assert parse_target("Young=flip,Male=off", SINGLE).slug == "Young=flip+Male=0"


def test_labels_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,Male,demo-celeba:Young,Black_Hair\n"
                    "a.jpg,1,-1,\nsub\\b.png,0,1,1\n\n")
    table, covered = read_labels_csv(path, SINGLE)
    assert covered == ["demo-celeba:Male", "demo-celeba:Young", "demo-celeba:Black_Hair"]
    a = table["a.jpg"]
    assert a[4] == 1 and a[5] == 0 and np.isnan(a[0]) and np.isnan(a[1])
    assert table["sub/b.png"][0] == 1


@pytest.mark.parametrize("text, fragment", [
    ("name,Male\n", "first column must be 'file'"),
    ("file,Mael\n", "Did you mean Male?"),
    ("file,Male\na.jpg,2\n", "line 2"),
    ("", "empty"),
])
def test_labels_csv_errors(tmp_path, text, fragment):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(UsageError, match=fragment):
        read_labels_csv(path, SINGLE)


@pytest.mark.parametrize("body, fragment", [
    (b"file,Male\na.jpg,1\nJos\xe9.jpg,0\n", "line 3: byte 0xe9 is not UTF-8"),
    (b"file,Male\na.jpg,1\nb.jpg,inf\n", "line 3: column 'Male': 'inf' is not a label value"),
    (b"file,Male\na.jpg,0.5\n", "line 2: column 'Male': '0.5' is not a label value"),
    (b"file,Male,Young\na.jpg,1,0\nb.jpg,0,5\n", "line 3: column 'Young': '5' is not a label"),
])
def test_labels_csv_bad_values_name_the_file_and_line(tmp_path, body, fragment):
    path = tmp_path / "labels.csv"
    path.write_bytes(body)
    with pytest.raises(UsageError) as err:
        read_labels_csv(path, SINGLE)
    msg = str(err.value)
    assert msg.startswith(f"--labels {path} line ") and fragment in msg
    assert "\n" not in msg and err.value.exit_code == 2


def test_labels_csv_spreadsheet_export_and_bom(tmp_path):
    # A byte-order mark, quoted names with commas, CRLF and 1.0/-1.0 as a spreadsheet writes.
    path = tmp_path / "labels.csv"
    path.write_bytes(b'\xef\xbb\xbffile,Male,Young\r\n"a, b.jpg",1.0,-1.0\r\nc.jpg,,yes\r\n')
    table, covered = read_labels_csv(path, SINGLE)
    assert covered == ["demo-celeba:Male", "demo-celeba:Young"]
    assert table["a, b.jpg"][4:].tolist() == [1, 0]
    assert np.isnan(table["c.jpg"][4]) and table["c.jpg"][5] == 1


def test_labels_csv_two_columns_for_one_label(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,Male,demo-celeba:Male\na.jpg,1,0\n")
    with pytest.raises(UsageError, match="'Male' and 'demo-celeba:Male' name the same label"):
        read_labels_csv(path, SINGLE)
