import numpy as np
import torch

from starcli.data.labels import LabelLayout, LabelSpace, did_you_mean

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
