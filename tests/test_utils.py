"""Atomic writes: complete or absent, ordinary permissions, long names."""

from __future__ import annotations

import os
import stat

import pytest

from starcli.utils import atomic_write_bytes, atomic_write_text


@pytest.mark.parametrize("durable", [True, False])
def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path, durable):
    old = os.umask(0o002)  # a shared home: group-writable
    try:
        import importlib

        import starcli.utils as utils

        importlib.reload(utils)  # the module reads the umask once, at import
        utils.atomic_write_bytes(tmp_path / "a.bin", b"x", durable=durable)
    finally:
        os.umask(old)
        importlib.reload(utils)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o664


def test_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_a_name_near_the_length_limit_can_be_written(tmp_path):
    target = tmp_path / ("n" * 250 + ".png")
    atomic_write_bytes(target, b"png")
    assert target.read_bytes() == b"png"


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
