"""Target specs: what `translate --to SPEC` asks the generator to produce.

A spec is comma-separated assignments on the checkpoint's label table:

    Blond_Hair               on; the other members of its exclusive group (hair colours) off
    Male=0                   off (also: off, false, no, -1)
    Young=flip               the opposite of the input's own value
    happy                    a one-hot label (RaFD expressions): exactly this one on
    demo-rafd:happy          qualified with the dataset (or format) when a name is ambiguous
    Smiling                  on a joint model without a CelebA Smiling column: the registry
                             alias rafd:happy is used instead, and a note says so

Labels a spec does not name keep the input's own values (estimated by the discriminator or
read from a CSV), which is why a target is turned into label vectors per batch with
`Target.encode(layout, source)`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from starcli.data.labels import LabelLayout, did_you_mean
from starcli.data.tables import read_label_csv as read_label_rows
from starcli.errors import UsageError

__all__ = ["Assignment", "Target", "parse_target", "parse_targets", "read_labels_csv",
           "label_listing"]

Value = Literal["on", "off", "flip"]

_ON = {"1", "on", "true", "yes", "+1"}
_OFF = {"0", "off", "false", "no", "-1"}
_FLIP = {"flip", "toggle", "invert"}
_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.=+\-]+")


@dataclass(frozen=True)
class Assignment:
    space: int  # index into layout.spaces
    column: int  # column within that space
    name: str  # the label's own name
    value: Value


@dataclass(frozen=True)
class Target:
    """One parsed `--to` spec."""

    text: str  # as the user wrote it
    slug: str  # output folder name
    assignments: tuple[Assignment, ...]
    notes: tuple[str, ...] = ()  # alias resolutions and other things the user should know

    @property
    def spaces(self) -> tuple[int, ...]:
        """Label spaces this target writes, in first-mentioned order."""
        return tuple(dict.fromkeys(a.space for a in self.assignments))

    def needs_source(self, layout: LabelLayout) -> bool:
        """True when some output label depends on the input's own labels (a multi-label space
        with columns the spec leaves open, or a flip)."""
        for s in self.spaces:
            space = layout.spaces[s]
            if space.kind == "onehot":
                continue
            if len(self.fixed_columns(layout, s)) < space.width:
                return True
        return False

    def fixed_columns(self, layout: LabelLayout, s: int) -> set[int]:
        """Columns of space `s` whose output value the spec decides on its own."""
        space = layout.spaces[s]
        fixed: set[int] = set()
        for a in self.assignments:
            if a.space != s or a.value == "flip":
                continue
            fixed.add(a.column)
            if a.value == "on":
                group = space.group_of(a.name) or ()
                fixed.update(space.names.index(n) for n in group)
        return fixed

    def encode(self, layout: LabelLayout, source: np.ndarray) -> np.ndarray:
        """Label vectors (N, layout.c_dim) float32 for inputs whose own labels are `source`
        (N, layout.cls_dim); entries of spaces the target does not touch are ignored."""
        n = source.shape[0]
        out = np.zeros((n, layout.c_dim), dtype=np.float32)
        for s in self.spaces:
            block = layout.blocks[s]
            space = block.space
            mine = [a for a in self.assignments if a.space == s]
            if space.kind == "onehot":
                vals = np.zeros((n, space.width), dtype=np.float32)
                vals[:, mine[0].column] = 1.0
            else:
                vals = np.array(source[:, block.offset:block.stop], dtype=np.float32)
                vals = np.nan_to_num(vals, nan=0.0)
                explicit = {a.column for a in mine}
                for a in mine:
                    col = a.column
                    if a.value == "flip":
                        turned_on = vals[:, col] < 0.5
                        vals[:, col] = turned_on.astype(np.float32)
                    else:
                        turned_on = np.full(n, a.value == "on")
                        vals[:, col] = 1.0 if a.value == "on" else 0.0
                    # A member of an exclusive group switched on turns its partners off
                    # (unless the spec sets them itself).
                    for other in space.group_of(a.name) or ():
                        j = space.names.index(other)
                        if j != col and j not in explicit:
                            vals[turned_on, j] = 0.0
            out[:, block.offset:block.stop] = vals
            if layout.use_mask:
                out[:, layout.mask_offset + s] = 1.0
        return out


def label_listing(layout: LabelLayout) -> str:
    """'demo-celeba: A, B; demo-rafd: x, y' for error messages."""
    return "; ".join(f"{s.dataset}: {', '.join(s.names)}" for s in layout.spaces)


def _all_names(layout: LabelLayout) -> list[str]:
    return [n for s in layout.spaces for n in s.names]


def _space_matches(layout: LabelLayout, qualifier: str) -> list[int]:
    """Spaces a qualifier names: by dataset name, else by format."""
    exact = [i for i, s in enumerate(layout.spaces) if s.dataset == qualifier]
    if exact:
        return exact
    return [i for i, s in enumerate(layout.spaces) if s.format == qualifier]


def _find(layout: LabelLayout, name: str, spaces: Sequence[int]) -> list[tuple[int, int]]:
    hits = [(i, layout.spaces[i].names.index(name)) for i in spaces
            if name in layout.spaces[i].names]
    if hits:
        return hits
    low = name.lower()
    return [(i, j) for i in spaces for j, n in enumerate(layout.spaces[i].names)
            if n.lower() == low]


def _resolve_alias(layout: LabelLayout, qualifier: str | None, name: str,
                   aliases: Sequence[tuple[str, str]]) -> list[tuple[int, int, str]]:
    """(space, column, alias text) for alias pairs whose one side is `name`."""
    found: list[tuple[int, int, str]] = []
    for pair in aliases:
        for here, there in (pair, pair[::-1]):
            q_here, _, l_here = here.partition(":")
            if l_here.lower() != name.lower():
                continue
            if qualifier is not None:
                named = _space_matches(layout, qualifier)
                if qualifier != q_here and not any(layout.spaces[i].format == q_here
                                                   for i in named):
                    continue
            q_there, _, l_there = there.partition(":")
            for s, c in _find(layout, l_there, _space_matches(layout, q_there)):
                if (s, c) not in [(f[0], f[1]) for f in found]:
                    found.append((s, c, there))
    return found


def _resolve(layout: LabelLayout, token: str, spec: str,
             aliases: Sequence[tuple[str, str]]) -> tuple[int, int, str | None]:
    """(space, column, note) for one label name as written in a spec."""
    qualifier, sep, name = token.rpartition(":")
    qualifier = qualifier if sep else None
    if qualifier is not None:
        spaces = _space_matches(layout, qualifier)
        if not spaces:
            raise UsageError(
                f"--to '{spec}': '{qualifier}' is not a label space of this model."
                f"{did_you_mean(qualifier, [s.dataset for s in layout.spaces])} Its label "
                f"spaces: {', '.join(s.dataset for s in layout.spaces)}.")
    else:
        spaces = list(range(len(layout.spaces)))
    hits = _find(layout, name, spaces)
    if len(hits) == 1:
        return hits[0][0], hits[0][1], None
    if len(hits) > 1:
        where = ", ".join(f"{layout.spaces[s].dataset}:{layout.spaces[s].names[c]}"
                          for s, c in hits)
        raise UsageError(f"--to '{spec}': '{name}' exists in several label spaces ({where}); "
                         "qualify it, e.g. --to " + where.split(", ")[0] + ".")
    via = _resolve_alias(layout, qualifier, name, aliases)
    if len(via) == 1:
        s, c, text = via[0]
        space = layout.spaces[s]
        note = (f"'{token}' is not a label of this model; using its alias "
                f"{space.dataset}:{space.names[c]} (from {text.split(':')[0]} label '{name}').")
        return s, c, note
    if len(via) > 1:
        options = ", ".join(f"{layout.spaces[s].dataset}:{layout.spaces[s].names[c]}"
                            for s, c, _ in via)
        raise UsageError(f"--to '{spec}': '{name}' is an alias of several labels ({options}); "
                         "name one of them.")
    raise UsageError(f"--to '{spec}': unknown label '{token}'."
                     f"{did_you_mean(name, _all_names(layout))} This model's labels: "
                     f"{label_listing(layout)}.")


def _value(text: str, spec: str, token: str) -> Value:
    v = text.strip().lower()
    if v in _ON:
        return "on"
    if v in _OFF:
        return "off"
    if v in _FLIP:
        return "flip"
    raise UsageError(f"--to '{spec}': '{token}={text}' has an unknown value; use 1, 0 or flip.")


def _slug_part(display: str, value: Value) -> str:
    return display + {"on": "", "off": "=0", "flip": "=flip"}[value]


def parse_target(spec: str, layout: LabelLayout, *, aliases: Sequence[tuple[str, str]] = (),
                 mix_label_spaces: bool = False) -> Target:
    """Parse one spec against `layout`; `UsageError` (exit 2) for anything it cannot mean.

    `aliases` adds pairs of "<dataset or format>:<label>" names that mean the same thing (the
    registry's table) to the checkpoint's own `layout.aliases`.
    """
    items = [part.strip() for part in spec.split(",")]
    if not spec.strip() or not any(items):
        raise UsageError("--to needs at least one label, e.g. --to Blond_Hair or "
                         "--to Male=0,Young=flip.")
    all_aliases = tuple(layout.aliases) + tuple(aliases)
    assignments: list[Assignment] = []
    notes: list[str] = []
    slug_parts: list[str] = []
    for item in items:
        if not item:
            continue
        token, eq, raw = item.partition("=")
        token = token.strip()
        if not token:
            raise UsageError(f"--to '{spec}': '{item}' has no label name.")
        value = _value(raw, spec, token) if eq else "on"
        s, c, note = _resolve(layout, token, spec, all_aliases)
        space = layout.spaces[s]
        name = space.names[c]
        if note:
            notes.append(note)
        if space.kind == "onehot" and value != "on":
            raise UsageError(
                f"--to '{spec}': '{name}' is one of {space.dataset}'s one-hot labels (exactly "
                f"one is on), so it cannot be set to {raw.strip()}; name the label to switch "
                f"to instead, e.g. --to {space.names[0]}.")
        for a in assignments:
            if a.space == s and a.column == c and a.value != value:
                raise UsageError(f"--to '{spec}': '{name}' is set twice with different values.")
            if a.space == s and space.kind == "onehot" and a.column != c:
                raise UsageError(f"--to '{spec}': '{a.name}' and '{name}' are one-hot labels of "
                                 f"{space.dataset}; only one can be on.")
            group = space.group_of(name)
            if (a.space == s and a.column != c and value == "on" and a.value == "on"
                    and group and a.name in group):
                raise UsageError(f"--to '{spec}': '{a.name}' and '{name}' are in the exclusive "
                                 f"group {', '.join(group)}; at most one can be on.")
        if any(a.space == s and a.column == c for a in assignments):
            continue  # the same assignment twice
        assignments.append(Assignment(space=s, column=c, name=name, value=value))
        # The user's word for alias matches (the folder they will look for), else the label.
        display = token.rpartition(":")[2] if note else name
        if ":" in token and not note:
            display = f"{space.dataset}-{name}"
        slug_parts.append(_slug_part(display, value))
    spaces = list(dict.fromkeys(a.space for a in assignments))
    if len(spaces) > 1 and not mix_label_spaces:
        parts = "; ".join(
            f"{layout.spaces[s].dataset}: "
            f"{', '.join(a.name for a in assignments if a.space == s)}" for s in spaces)
        raise UsageError(
            f"--to '{spec}' mixes labels from {len(spaces)} label spaces ({parts}); the model "
            "was never trained on such combinations. Use one --to per label space, or pass "
            "--mix-label-spaces to try it anyway.")
    slug = _SLUG_BAD.sub("-", "+".join(slug_parts)).strip(".") or "target"
    return Target(text=spec, slug=slug, assignments=tuple(assignments), notes=tuple(notes))


def parse_targets(specs: Sequence[str], layout: LabelLayout, *,
                  aliases: Sequence[tuple[str, str]] = (),
                  mix_label_spaces: bool = False) -> list[Target]:
    """Parse every `--to`; specs that produce the same output folder are kept once."""
    if not specs:
        raise UsageError("Pass at least one --to SPEC, e.g. --to Blond_Hair. This model's "
                         f"labels: {label_listing(layout)}.")
    out: dict[str, Target] = {}
    for spec in specs:
        target = parse_target(spec, layout, aliases=aliases, mix_label_spaces=mix_label_spaces)
        out.setdefault(target.slug.lower(), target)
    return list(out.values())


# --------------------------------------------------------------------------- --labels CSV


def _label_position(layout: LabelLayout, name: str, where: str) -> tuple[int, str]:
    """(layout position, "dataset:label") of one `--labels` column name."""
    qualifier, sep, bare = name.rpartition(":")
    spaces = _space_matches(layout, qualifier) if sep else range(len(layout.spaces))
    hits = [(s, layout.spaces[s].names.index(bare)) for s in spaces
            if bare in layout.spaces[s].names]
    if not hits:
        raise UsageError(f"{where}: column '{name}' is not a label of this model."
                         f"{did_you_mean(bare, _all_names(layout))} This model's labels: "
                         f"{label_listing(layout)}.")
    if len(hits) > 1:
        raise UsageError(f"{where}: column '{name}' exists in several label spaces; "
                         "qualify it as <dataset>:<label>.")
    s, c = hits[0]
    return layout.blocks[s].offset + c, f"{layout.spaces[s].dataset}:{bare}"


def read_labels_csv(path: Path, layout: LabelLayout) -> tuple[dict[str, np.ndarray],
                                                              list[str]]:
    """Own labels from a CSV: a `file` column, then one 0/1 column per label name.

    Returns ({file key: (cls_dim,) float32 with NaN where unknown}, [label names covered]).
    File keys are the `file` column as written, with "\\" turned into "/"; callers match
    them against an input's relative path or its file name. Label columns may be qualified
    (`demo-celeba:Male`); unknown columns are a UsageError with a did-you-mean. The cells
    are read by the parser every label table uses (starcli.data.tables), so its one-line
    errors (not UTF-8, `inf`, `0.5`, `5`, with the line) apply here too.
    """
    where = f"--labels {path}"
    rows = read_label_rows(Path(path), where=where)  # blank cells -> NaN ("unknown")
    columns: list[tuple[int, int]] = []  # (table column, layout position)
    covered: list[str] = []
    named_by: dict[int, str] = {}
    for j, name in enumerate(rows.columns):
        pos, label = _label_position(layout, name, where)
        if pos in named_by:
            # Two columns for one label would let the later one win silently.
            raise UsageError(f"{where}: columns '{named_by[pos]}' and '{name}' name the same "
                             "label; keep one of them.")
        named_by[pos] = name
        columns.append((j, pos))
        covered.append(label)
    out: dict[str, np.ndarray] = {}
    for i, key in enumerate(rows.files):
        vec = np.full(layout.cls_dim, np.nan, dtype=np.float32)
        for j, pos in columns:
            vec[pos] = rows.values[i, j]
        out[key] = vec
    return out, covered
