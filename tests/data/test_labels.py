import numpy as np
import pytest
import torch

from starcli.data.labels import LabelLayout, LabelSpace, did_you_mean
from starcli.data.tables import read_celeba_attributes, read_celeba_partition, read_label_csv
from starcli.errors import DatasetNotFoundError, UsageError

CELEBA = LabelSpace("celeba", "celeba", "multilabel",
                    ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"),
                    (("Black_Hair", "Blond_Hair", "Brown_Hair"),))
RAFD = LabelSpace("rafd", "rafd", "onehot", ("angry", "contemptuous", "disgusted", "fearful",
                                            "happy", "neutral", "sad", "surprised"))


def test_single_space_has_no_mask():
    layout = LabelLayout((CELEBA,))
    assert (layout.c_dim, layout.cls_dim, layout.use_mask) == (5, 5, False)
    out = layout.encode(0, torch.tensor([[1.0, 0, 0, 1, 0]]))
    assert out.tolist() == [[1, 0, 0, 1, 0]]


def test_joint_layout_matches_stargan_mask_vector():
    layout = LabelLayout((CELEBA, RAFD))
    assert (layout.cls_dim, layout.c_dim) == (13, 15)
    celeba = layout.encode(0, np.array([[0, 1, 0, 1, 1]], dtype=np.float32))
    assert celeba.tolist() == [[0, 1, 0, 1, 1] + [0] * 8 + [1, 0]]
    onehot = torch.zeros(1, 8)
    onehot[0, 4] = 1
    rafd = layout.encode(1, onehot)
    assert rafd.tolist() == [[0] * 5 + [0, 0, 0, 0, 1, 0, 0, 0] + [0, 1]]
    assert layout.cls_slice(1) == slice(5, 13)


def test_round_trip_and_suggestions():
    layout = LabelLayout((CELEBA, RAFD), aliases=(("celeba:Smiling", "rafd:happy"),))
    assert LabelLayout.from_dict(layout.to_dict()) == layout
    assert layout.to_dict()["mask"] == {"offset": 13, "order": ["celeba", "rafd"]}
    assert did_you_mean("Blond_hair", CELEBA.names) == " Did you mean Blond_Hair?"
    assert did_you_mean("zzz", CELEBA.names) == ""


# --------------------------------------------------------------------------------------------
# The one label-table parser (starcli/data/tables.py)

def test_label_csv_values_blanks_and_line_numbers(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufefffile,Male,Young,\n\n a.jpg ,1,-1,\nsub\\b.png,on,\n"
                     "c.jpg,yes,1.0\n\n\"d,e.jpg\",FALSE,+1\n".encode())
    rows = read_label_csv(path)
    assert rows.columns == ("Male", "Young")  # the nameless, empty last column is dropped
    assert rows.files == ("a.jpg", "sub/b.png", "c.jpg", "d,e.jpg")
    assert rows.lines == (3, 4, 5, 7)
    got = rows.values.tolist()
    assert got[0] == [1, 0] and got[1][0] == 1 and np.isnan(got[1][1])
    assert got[2] == [1, 1] and got[3] == [0, 1]
    assert rows.values.dtype == np.float32


@pytest.mark.parametrize("text, fragment", [
    ("file,Male\na.jpg,2\n", "line 2: column 'Male': '2' is not a label value; use 1 or 0"),
    ("file,Male\na.jpg,1\nb.jpg,inf\n", "line 3: column 'Male': 'inf'"),
    ("file,Male\na.jpg,0.5\n", "'0.5' is not a label value"),
    ("file,Male\na.jpg,NA\n", "'NA' is not a label value"),
    ("", "is empty"),
    ("\n\n", "is empty"),
    ("name,Male\n", "line 1: the first column must be 'file'"),
    ("file,Male\na.jpg,1,0,1\n", "line 2: 4 fields, more fields than the 2 expected"),
    ("file,Male\na.jpg,1,0\n", "line 2: 3 fields, more fields than the 2 expected"),
    ("file,Male\na.jpg,1\nb.jpg,1,0,1,1\n", "line 3: 5 fields"),
    ("file,Male,\na.jpg,1,1\n", "line 2: column 3 has values but no name"),
    ("file,Male,Male\na.jpg,1,1\n", "names Male twice"),
    ("file,Male\n,1\n", "line 2: the file name is blank"),
    ('file,Male\n"a.jpg,1\n', "cannot be parsed"),
])
def test_label_csv_errors_are_one_line_with_file_and_line(tmp_path, text, fragment):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        read_label_csv(path, where=f"--labels {path}")
    msg = str(err.value)
    assert fragment in msg and msg.startswith(f"--labels {path}") and "\n" not in msg


def test_label_csv_blanks_can_be_refused_and_encoding_is_checked(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,Male,Young\na.jpg,1,0\nb.jpg,1\n")
    assert np.isnan(read_label_csv(path).values[1, 1])
    with pytest.raises(UsageError, match="line 3: column 'Young' is blank; give 1 or 0"):
        read_label_csv(path, blanks=False)
    path.write_bytes("file,Male\nb.jpg,1\nné.jpg,1\n".encode("cp1252"))
    with pytest.raises(UsageError, match=r"line 3: byte 0xe9 is not UTF-8 text\. Save it as UTF-8"):
        read_label_csv(path)
    with pytest.raises(UsageError, match="cannot read it"):
        read_label_csv(tmp_path / "missing.csv")


def test_celeba_lists_keep_blank_lines_and_mark_malformed_ones(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("4\nA B C\n1.jpg 1 -1  1\n\n2.jpg 1 1\n3.jpg 1 1 1 1\n4.jpg -1 x 1\n"
                    " 5.jpg 0 1 -1\r\n")
    attrs = read_celeba_attributes(path, ["A", "B", "C"], fix="Re-fetch.",
                                   error=DatasetNotFoundError)
    assert attrs.files == ["1.jpg", None, "2.jpg", "3.jpg", "4.jpg", "5.jpg"]
    assert attrs.malformed.tolist() == [False, False, True, True, True, False]
    assert attrs.bits.tolist()[0] == [1, 0, 1] and attrs.bits.tolist()[5] == [0, 1, 0]
    assert attrs.line_of(5) == 8
    with pytest.raises(DatasetNotFoundError, match=r"line 2: the header line .*Re-fetch\.$"):
        read_celeba_attributes(path, ["A", "B", "D"], fix="Re-fetch.",
                               error=DatasetNotFoundError)
    path.write_text("1\nA B\n1.jpg 1 1 1 1\n")
    with pytest.raises(DatasetNotFoundError, match="line 3: 5 fields, more fields than the 3"):
        read_celeba_attributes(path, ["A", "B"], fix="", error=DatasetNotFoundError)

    part = tmp_path / "list_eval_partition.txt"
    part.write_text("1.jpg 0\r\n\r\n2.jpg 1\r\n3.jpg 2\r\n")
    assert read_celeba_partition(part, fix="", error=DatasetNotFoundError) == {
        "1.jpg": "train", "2.jpg": "valid", "3.jpg": "test"}
    for bad, line in (("1.jpg 0\n2.jpg 1.5\n", 2), ("1.jpg\n", 1), ("1.jpg 0 0\n", 1)):
        part.write_text(bad)
        with pytest.raises(DatasetNotFoundError, match=f"line {line}:"):
            read_celeba_partition(part, fix="", error=DatasetNotFoundError)
