"""Checks of config values that name the command-line flag (torch-free, shared by every config)."""

from __future__ import annotations

from typing import Any

from starcli.errors import ConfigError

__all__ = ["flag", "check_int"]


def flag(name: str) -> str:
    """The command-line flag of a config field: g_conv_dim → --g-conv-dim."""
    return "--" + name.replace("_", "-")


def check_int(name: str, value: Any, minimum: int) -> None:
    """ConfigError naming the flag unless `value` is an int (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{flag(name)} must be an integer, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"{flag(name)} must be at least {minimum}, got {value}.")


def mask_penalty_fields() -> tuple[Any, Any]:
    """The dataclass fields of --lambda-mask and --lambda-mask-tv, the penalties on the
    attention mask of a family's --g-blend generator (one wording for every family)."""
    from dataclasses import field

    return (field(default=0.0, metadata={
                "min": 0.0, "help": "--g-blend: weight of the mask's mean (keeps it closed "
                                    "where nothing has to change)."}),
            field(default=0.0, metadata={
                "min": 0.0, "help": "--g-blend: weight of the mask's total variation "
                                    "(smooth masks)."}))
