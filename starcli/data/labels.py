"""Label tables: which labels a model knows and how they are laid out in the label vector.

A single-dataset model sees one `LabelSpace` and a label vector of its width. A joint model
(StarGAN's mask-vector training) sees the spaces side by side followed by a one-hot mask that
says which space is active:

    CelebA sample: [attrs, zeros(8), 1, 0]      RaFD sample: [zeros(c_dim), one-hot, 0, 1]

`c_dim` (the generator's label channels) and `cls_dim` (the discriminator's classifier width)
are always derived from the layout, never typed by a user.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["multilabel", "onehot"]


@dataclass(frozen=True)
class LabelSpace:
    """The labels one prepared dataset contributes: names in vector order."""

    dataset: str  # prepared dataset name, e.g. "celeba" or "demo-rafd"
    format: str  # on-disk format: "celeba", "rafd" or "folder"
    kind: Kind  # multilabel: independent 0/1 per name; onehot: exactly one name is on
    names: tuple[str, ...]
    exclusive_groups: tuple[tuple[str, ...], ...] = ()  # multilabel names of which one is on

    @property
    def width(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "format": self.format, "kind": self.kind,
                "names": list(self.names),
                "exclusive_groups": [list(g) for g in self.exclusive_groups]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSpace:
        return cls(dataset=d["dataset"], format=d["format"], kind=d["kind"],
                   names=tuple(d["names"]),
                   exclusive_groups=tuple(tuple(g) for g in d.get("exclusive_groups", ())))

    def group_of(self, name: str) -> tuple[str, ...] | None:
        for group in self.exclusive_groups:
            if name in group:
                return group
        return None


@dataclass(frozen=True)
class LabelBlock:
    space: LabelSpace
    offset: int

    @property
    def stop(self) -> int:
        return self.offset + self.space.width


@dataclass(frozen=True)
class LabelLayout:
    """One or more label spaces side by side, with a mask vector when there are several."""

    spaces: tuple[LabelSpace, ...]
    # Pairs of qualified names ("<dataset>:<label>") that mean the same thing in two spaces,
    # e.g. ("demo-celeba:Smiling", "demo-rafd:happy").
    aliases: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.spaces:
            raise ValueError("a label layout needs at least one label space")
        names = [s.dataset for s in self.spaces]
        if len(set(names)) != len(names):
            raise ValueError(f"a dataset appears twice in the label layout: {names}")

    @property
    def use_mask(self) -> bool:
        return len(self.spaces) > 1

    @property
    def blocks(self) -> tuple[LabelBlock, ...]:
        out, offset = [], 0
        for space in self.spaces:
            out.append(LabelBlock(space, offset))
            offset += space.width
        return tuple(out)

    @property
    def cls_dim(self) -> int:
        """Width of the discriminator's classification head."""
        return sum(s.width for s in self.spaces)

    @property
    def c_dim(self) -> int:
        """Number of label channels the generator takes (labels plus mask)."""
        return self.cls_dim + (len(self.spaces) if self.use_mask else 0)

    @property
    def mask_offset(self) -> int:
        return self.cls_dim

    def index_of(self, dataset: str) -> int:
        for i, space in enumerate(self.spaces):
            if space.dataset == dataset:
                return i
        raise KeyError(dataset)

    def cls_slice(self, space_index: int) -> slice:
        block = self.blocks[space_index]
        return slice(block.offset, block.stop)

    def encode(self, space_index: int, labels):
        """Full label vectors (N, c_dim) from one space's labels (N, width), as a tensor or
        array of the same library and dtype as `labels`."""
        block = self.blocks[space_index]
        n = labels.shape[0]
        if hasattr(labels, "new_zeros"):  # torch
            out = labels.new_zeros((n, self.c_dim))
        else:
            import numpy as np

            out = np.zeros((n, self.c_dim), dtype=labels.dtype)
        out[:, block.offset:block.stop] = labels
        if self.use_mask:
            out[:, self.mask_offset + space_index] = 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "spaces": [s.to_dict() for s in self.spaces],
            "aliases": [list(a) for a in self.aliases],
            "blocks": [{"dataset": b.space.dataset, "offset": b.offset, "width": b.space.width,
                        "kind": b.space.kind, "names": list(b.space.names)} for b in self.blocks],
            "mask": ({"offset": self.mask_offset, "order": [s.dataset for s in self.spaces]}
                     if self.use_mask else None),
            "c_dim": self.c_dim,
            "cls_dim": self.cls_dim,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelLayout:
        return cls(spaces=tuple(LabelSpace.from_dict(s) for s in d["spaces"]),
                   aliases=tuple(tuple(a) for a in d.get("aliases", ())))


def did_you_mean(name: str, choices) -> str:
    """' Did you mean X?' or '' (for error messages)."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in choices}
        if name.lower() in lowered:
            match = [lowered[name.lower()]]
    return f" Did you mean {match[0]}?" if match else ""
