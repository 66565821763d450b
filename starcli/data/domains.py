"""Domains picked from a prepared dataset's label table (torch-free).

Two-domain families (CycleGAN) and multi-domain ones (StarGAN v2) train on K named domains,
each a set of rows of one label space. A spec names them:

    resolve_domains(space, "Male")                    # female / male  (one binary attribute)
    resolve_domains(space, "Eyeglasses")              # no-Eyeglasses / Eyeglasses
    resolve_domains(space, "Blond_Hair,Black_Hair")   # members of one exclusive group
    resolve_domains(space, "hair")                    # a whole exclusive group (its suffix)
    resolve_domains(rafd_space, "happy,sad")          # classes of a one-hot space (RaFD,
    resolve_domains(folder_space, "")                 #  folders): "" or "all" = every class

`Domains.assign(labels)` gives each row's domain (-1 for rows in none of them) and
`Domains.apply(k, labels)` sets rows' labels to domain k (what a target of domain k is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from starcli.data.labels import LabelSpace, did_you_mean
from starcli.errors import ConfigError

__all__ = ["Domains", "resolve_domains", "group_name"]

# Readable names for the two sides of a binary attribute.
_BINARY_NAMES = {"Male": ("female", "male"), "Young": ("old", "young")}


def group_name(group: tuple[str, ...]) -> str:
    """The name of an exclusive group: its members' shared suffix (Black_Hair, Blond_Hair →
    "hair"), else its members joined by '+'."""
    tails = {g.rsplit("_", 1)[-1].lower() for g in group}
    if len(tails) == 1 and all("_" in g for g in group):
        return tails.pop()
    return "+".join(group)


@dataclass(frozen=True)
class Domains:
    """K domains of one label space: `kind` "binary" (one attribute off/on), "group"
    (members of one exclusive group) or "onehot" (classes of a one-hot space)."""

    kind: str
    names: tuple[str, ...]  # the domains' display names
    columns: tuple[int, ...]  # binary: (column,); group/onehot: one column per domain
    off: tuple[int, ...] = ()  # group: the whole group's columns (switched off together)
    labels: tuple[str, ...] = ()  # the label names of `columns` (binary: the attribute)

    def __len__(self) -> int:
        return len(self.names)

    def assign(self, labels: np.ndarray) -> np.ndarray:
        """(N,) int64: each row's domain index, -1 for rows in none of the domains."""
        labels = np.asarray(labels) > 0.5
        if self.kind == "binary":
            return labels[:, self.columns[0]].astype(np.int64)
        on = labels[:, list(self.columns)]
        out = np.where(on.any(1), on.argmax(1), -1).astype(np.int64)
        if self.kind == "group":  # a row with two members on (bad labels) is in neither
            out[on.sum(1) > 1] = -1
        return out

    def apply(self, k: int, labels: np.ndarray) -> np.ndarray:
        """Copies of `labels` (N, width) set to domain `k` (the rest of each row kept)."""
        out = np.array(labels, dtype=np.float32, copy=True)
        if self.kind == "binary":
            out[:, self.columns[0]] = float(k)
        elif self.kind == "group":
            out[:, list(self.off)] = 0.0
            out[:, self.columns[k]] = 1.0
        else:
            out[:] = 0.0
            out[:, self.columns[k]] = 1.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "names": list(self.names), "columns": list(self.columns),
                "off": list(self.off), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Domains:
        return cls(kind=d["kind"], names=tuple(d["names"]), columns=tuple(d["columns"]),
                   off=tuple(d.get("off", ())), labels=tuple(d.get("labels", ())))


def _unknown(name: str, space: LabelSpace, flag: str) -> ConfigError:
    groups = [group_name(g) for g in space.exclusive_groups]
    known = ", ".join(list(space.names) + groups)
    return ConfigError(f"{flag} {name!r} is not a label of {space.dataset}; choose from "
                       f"{known}.{did_you_mean(name, list(space.names) + groups)}")


def resolve_domains(space: LabelSpace, spec: str | None, *, flag: str = "--domains",
                    count: int | None = None) -> Domains:
    """The domains `spec` names in `space` (see the module docstring); `count` demands
    exactly that many domains (CycleGAN: 2). ConfigError naming `flag` otherwise."""
    words = [w.strip() for w in (spec or "").split(",") if w.strip()]
    if space.kind == "onehot":
        if not words or words == ["all"]:
            words = list(space.names)
        for w in words:
            if w not in space.names:
                raise _unknown(w, space, flag)
        if len(set(words)) != len(words):
            raise ConfigError(f"{flag} names a domain twice: {spec}.")
        cols = tuple(space.names.index(w) for w in words)
        domains = Domains("onehot", tuple(words), cols, labels=tuple(words))
    else:
        if not words:
            raise ConfigError(f"{flag} is needed for {space.dataset} (multi-label): name one "
                              "attribute (Male), members of one exclusive group "
                              "(Blond_Hair,Black_Hair) or a group (hair).")
        groups = {group_name(g): g for g in space.exclusive_groups}
        if len(words) == 1 and words[0] in groups:
            words = [n for n in groups[words[0]] if n in space.names]
        for w in words:
            if w not in space.names:
                raise _unknown(w, space, flag)
        if len(set(words)) != len(words):
            raise ConfigError(f"{flag} names a domain twice: {spec}.")
        if len(words) == 1 and space.group_of(words[0]) is None:
            name = words[0]
            names = _BINARY_NAMES.get(name, (f"no-{name}", name))
            domains = Domains("binary", names, (space.names.index(name),), labels=(name,))
        else:
            group = space.group_of(words[0])
            if group is None or any(space.group_of(w) != group for w in words):
                raise ConfigError(f"{flag} {spec}: several attributes must belong to one "
                                  f"exclusive group of {space.dataset} (e.g. the hair "
                                  "colours); name one attribute for a binary split.")
            cols = tuple(space.names.index(w) for w in words)
            off = tuple(space.names.index(g) for g in group if g in space.names)
            domains = Domains("group", tuple(words), cols, off, labels=tuple(words))
    if count is not None and len(domains) != count:
        raise ConfigError(f"{flag} {spec or '(all)'} gives {len(domains)} domains "
                          f"({', '.join(domains.names)}) of {space.dataset}; this family "
                          f"needs exactly {count}.")
    return domains
