"""Model families: one folder each, registered here by name.

This module is torch-free: the CLI reads names, option classes and presets from it while it
parses flags. `get_family(name)` imports the family's torch side (networks, step, sampler,
translator) on first use.

    info = family_info("stargan-v1")      # options class and presets, no torch
    fam = get_family("stargan-v1")        # the Family object the engine drives

Adding a family: a folder `starcli/families/<name>/` with a torch-free `config.py` (an options
dataclass and PRESETS) and a `family.py` whose `FAMILY` implements `starcli.families.base.Family`;
then one `FamilyInfo` line below. See ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starcli.errors import ConfigError

if TYPE_CHECKING:
    from starcli.families.base import Family

__all__ = ["FamilyInfo", "FAMILIES", "FAMILY_NAMES", "DEFAULT_FAMILY", "family_info",
           "get_family", "LEGACY_FAMILY"]


@dataclass(frozen=True)
class FamilyInfo:
    """What the CLI and the config need to know about a family without importing torch."""

    name: str
    config_module: str  # torch-free: OPTIONS (the options dataclass) and PRESETS
    family_module: str  # torch side: FAMILY

    @property
    def options(self) -> type:
        return importlib.import_module(self.config_module).OPTIONS

    @property
    def presets(self) -> dict[str, dict[str, Any]]:
        return importlib.import_module(self.config_module).PRESETS


FAMILIES: dict[str, FamilyInfo] = {
    "stargan-v1": FamilyInfo("stargan-v1", "starcli.families.stargan_v1.config",
                             "starcli.families.stargan_v1.family"),
    "cyclegan": FamilyInfo("cyclegan", "starcli.families.cyclegan.config",
                           "starcli.families.cyclegan.family"),
    "stargan-v2": FamilyInfo("stargan-v2", "starcli.families.stargan_v2.config",
                             "starcli.families.stargan_v2.family"),
}
FAMILY_NAMES = tuple(FAMILIES)
DEFAULT_FAMILY = "stargan-v1"
# Checkpoints and run configs written before families existed carry no `family`: they are v1.
LEGACY_FAMILY = "stargan-v1"


def family_info(name: str) -> FamilyInfo:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"--family {name!r} is not known; choose one of "
                          f"{', '.join(FAMILY_NAMES)}.") from None


def get_family(name: str) -> Family:
    """The family object (imports torch and the family's networks)."""
    return importlib.import_module(family_info(name).family_module).FAMILY
