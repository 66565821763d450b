"""Domains from a label table: binary attributes, exclusive groups, one-hot classes."""

from __future__ import annotations

import numpy as np
import pytest

from starcli.data.domains import Domains, resolve_domains
from starcli.data.labels import LabelSpace
from starcli.errors import ConfigError

HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
CELEBA = LabelSpace("demo-celeba", "celeba", "multilabel", (*HAIR, "Male", "Young"),
                    exclusive_groups=(HAIR,))
RAFD = LabelSpace("demo-rafd", "rafd", "onehot",
                  ("angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised",
                   "contemptuous"))
ROWS = np.array([
    # Black Blond Brown Gray Male Young
    [1, 0, 0, 0, 1, 0],
    [0, 1, 0, 0, 0, 1],
    [0, 0, 1, 0, 1, 1],
    [0, 0, 0, 1, 0, 0],
    [0, 0, 0, 0, 1, 0],  # no hair label
], np.float32)


def test_binary_attribute_names_its_sides_and_flips_only_it():
    d = resolve_domains(CELEBA, "Male", count=2)
    assert d.names == ("female", "male") and d.kind == "binary"
    assert d.assign(ROWS).tolist() == [1, 0, 1, 0, 1]
    flipped = d.apply(0, ROWS)
    assert flipped[:, 4].tolist() == [0] * 5
    assert np.array_equal(np.delete(flipped, 4, 1), np.delete(ROWS, 4, 1))
    assert resolve_domains(CELEBA, "Young").names == ("old", "young")


def test_group_members_and_whole_group():
    pair = resolve_domains(CELEBA, "Blond_Hair,Black_Hair", count=2)
    assert pair.names == ("Blond_Hair", "Black_Hair")
    assert pair.assign(ROWS).tolist() == [1, 0, -1, -1, -1]
    to_black = pair.apply(1, ROWS)
    assert to_black[:, :4].tolist() == [[1, 0, 0, 0]] * 5  # the whole group switched
    assert np.array_equal(to_black[:, 4:], ROWS[:, 4:])
    hair = resolve_domains(CELEBA, "hair")
    assert hair.names == HAIR and len(hair) == 4
    assert hair.assign(ROWS).tolist() == [0, 1, 2, 3, -1]
    bad = ROWS.copy()
    bad[0, 1] = 1  # two colours on: in no domain
    assert hair.assign(bad)[0] == -1
    assert Domains.from_dict(hair.to_dict()) == hair


def test_onehot_classes_all_or_listed():
    labels = np.eye(8, dtype=np.float32)[[3, 5, 0]]
    every = resolve_domains(RAFD, "")
    assert every.names == RAFD.names and every.assign(labels).tolist() == [3, 5, 0]
    two = resolve_domains(RAFD, "happy,sad", count=2)
    assert two.assign(labels).tolist() == [0, 1, -1]
    assert two.apply(1, labels).argmax(1).tolist() == [5, 5, 5]


@pytest.mark.parametrize("space, spec, count, text", [
    (CELEBA, "Blnd_Hair", None, "Did you mean Blond_Hair?"),
    (CELEBA, "", None, "--domains is needed"),
    (CELEBA, "Male,Young", None, "one exclusive group"),
    (CELEBA, "Male,Black_Hair", None, "one exclusive group"),
    (CELEBA, "hair", 2, "needs exactly 2"),
    (RAFD, "happy,happy", None, "twice"),
    (RAFD, "joyful", None, "not a label of demo-rafd"),
])
def test_bad_specs_name_the_flag(space, spec, count, text):
    with pytest.raises(ConfigError, match="--domains") as info:
        resolve_domains(space, spec, count=count)
    assert text in str(info.value)
