"""Where starcli keeps data: STARCLI_HOME (or --home) with raw/ and prepared/ below it."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "~/.cache/starcli"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """`--home` if given, else $STARCLI_HOME, else ~/.cache/starcli (not created here)."""
    value = home if home not in (None, "") else os.environ.get("STARCLI_HOME") or DEFAULT_HOME
    return Path(value).expanduser().resolve()


def raw_dir(home: Path, dataset: str) -> Path:
    return home / "raw" / dataset


def prepared_root(home: Path, dataset: str) -> Path:
    """Holds one folder per prepared image size: prepared/<dataset>/<size>/."""
    return home / "prepared" / dataset


def prepared_dir(home: Path, dataset: str, size: int) -> Path:
    return prepared_root(home, dataset) / str(size)
