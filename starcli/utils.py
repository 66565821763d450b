"""Small helpers shared by the engine: atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# The process umask, read once at import (reading it means setting it, which is not
# thread-safe later): files we write get the mode a plain open() would give them.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` via a temp file in the same folder and os.replace, so `path` is
    always absent or complete. `durable` also fsyncs the data (not needed for outputs a rerun
    recreates, like translated images). The file gets the usual 0666 & ~umask mode, not
    mkstemp's 0600, so shared homes stay readable by the group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A short temp name of its own: `path`'s name plus a suffix could pass the 255-byte limit.
    fd, tmp = tempfile.mkstemp(prefix=".starcli-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def fsync_path(path: Path, *, strict: bool = False) -> None:
    """fsync a file or a folder (a folder, so a rename inside it survives a power cut).
    Best effort unless `strict`: some file systems refuse to open or sync folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)
