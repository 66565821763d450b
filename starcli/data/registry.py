"""The dataset registry: `datasets.toml` shipped with starcli, extended by the user's own.

    registry = load_registry(home)
    spec = registry.get("celeba")        # UnknownDatasetError (exit 2) with a did-you-mean
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from starcli.data.labels import did_you_mean
from starcli.errors import ConfigError, UnknownDatasetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ACCESS_KINDS = ("download", "request", "synthetic")
FILE_KINDS = ("file", "archive")

# Field types of a dataset table, checked before anything reads them: a user's datasets.toml
# flows into paths and URL lists, where a wrong type fails far from its cause.
_STRINGS = ("title", "access", "format", "license", "homepage", "access_note",
            "filename_pattern")
_COUNTS = ("image_count", "default_crop", "subjects")
_STRING_LISTS = ("mirrors", "expressions", "gazes", "attrs", "checkpoint_files")
_INT_LISTS = ("angles", "default_angles")
_ATTRIBUTE_LISTS = ("names", "default_selected", "rendered")


@dataclass(frozen=True)
class FileSpec:
    name: str
    kind: str = "file"  # "file" or "archive" (extracted after verification)
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    gdrive_id: str | None = None
    urls: tuple[str, ...] = ()  # direct links, tried after the mirrors


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    access: str
    format: str
    license: str = ""
    homepage: str = ""
    access_note: str = ""
    files: tuple[FileSpec, ...] = ()
    mirrors: tuple[str, ...] = ()
    image_count: int | None = None
    image_size: tuple[int, int] | None = None  # (height, width) of the raw images
    image_dir: str = ""
    default_crop: int | None = None
    splits: dict[str, Any] = field(default_factory=dict)
    attributes: tuple[str, ...] = ()
    exclusive_groups: tuple[tuple[str, ...], ...] = ()
    default_selected: tuple[str, ...] = ()
    rendered: tuple[str, ...] = ()
    expressions: tuple[str, ...] = ()
    angles: tuple[int, ...] = ()
    default_angles: tuple[int, ...] = ()
    gazes: tuple[str, ...] = ()
    filename_pattern: str = ""
    subjects: int | None = None
    attrs: tuple[str, ...] = ()  # label names of a pretrained checkpoint
    checkpoint_files: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def filename_regex(self) -> re.Pattern[str] | None:
        return re.compile(self.filename_pattern) if self.filename_pattern else None


@dataclass(frozen=True)
class Registry:
    datasets: dict[str, DatasetSpec]
    aliases: tuple[tuple[str, str], ...]  # ("celeba:Smiling", "rafd:happy"): format-qualified
    sources: tuple[str, ...]  # files read, in order

    def names(self) -> list[str]:
        return sorted(self.datasets)

    def get(self, name: str) -> DatasetSpec:
        try:
            return self.datasets[name]
        except KeyError:
            raise UnknownDatasetError(
                f"Unknown dataset '{name}'.{did_you_mean(name, self.datasets)} "
                f"Known datasets: {', '.join(self.names())}."
            ) from None


def shipped_registry_text() -> str:
    return resources.files("starcli").joinpath("datasets.toml").read_text(encoding="utf-8")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _tuple(value: Any) -> tuple:
    return tuple(value) if value else ()


# --------------------------------------------------------------------------- validation


def _bad(where: str, key: str, want: str, value: Any) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ConfigError(f"{where} {key}: must be {want}, not {shown}. Fix it, see the shipped "
                       "datasets.toml for examples.")


def is_one_component(value: Any) -> bool:
    """True for a plain file or folder name: it cannot point anywhere but where it is put."""
    return (isinstance(value, str) and value not in ("", ".", "..")
            and not any(c in value for c in "/\\\x00"))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value)


def _check_scalars(where: str, d: dict[str, Any]) -> None:
    for key in _STRINGS:
        if key in d and not isinstance(d[key], str):
            raise _bad(where, key, "a string", d[key])
    for key in _COUNTS:
        if key in d and not _is_count(d[key]):
            negative = isinstance(d[key], int) and not isinstance(d[key], bool)
            raise _bad(where, key, "an integer, not negative" if negative else "an integer",
                       d[key])
    for key in _STRING_LISTS:
        if key in d and not _is_list_of(d[key], str):
            raise _bad(where, key, "a list of strings", d[key])
    for key in _INT_LISTS:
        if key in d and not _is_list_of(d[key], int):
            raise _bad(where, key, "a list of integers", d[key])
    if "image_size" in d:
        size = d["image_size"]
        if not (_is_list_of(size, int) and len(size) == 2 and min(size) > 0):
            raise _bad(where, "image_size", "[height, width] in pixels", size)
    if "image_dir" in d and not is_one_component(d["image_dir"]):
        raise _bad(where, "image_dir", "one folder name (no '/', '\\' or '..')",
                   d["image_dir"])
    if "filename_pattern" in d:
        try:
            re.compile(d["filename_pattern"])
        except re.error as exc:
            raise _bad(where, "filename_pattern", f"a valid regular expression ({exc})",
                       d["filename_pattern"]) from None


def _check_tables(where: str, d: dict[str, Any]) -> None:
    for key in ("splits", "attributes"):
        if key in d and not isinstance(d[key], dict):
            raise _bad(where, key, "a table", d[key])
    attrs = d.get("attributes", {})
    for key in _ATTRIBUTE_LISTS:
        if key in attrs and not _is_list_of(attrs[key], str):
            raise _bad(where, f"attributes.{key}", "a list of strings", attrs[key])
    groups = attrs.get("exclusive_groups", [])
    if not (isinstance(groups, list) and all(_is_list_of(g, str) for g in groups)):
        raise _bad(where, "attributes.exclusive_groups", "a list of lists of strings", groups)


def _check_file(where: str, i: int, f: Any) -> None:
    key = f"files[{i}]"
    if not isinstance(f, dict):
        raise _bad(where, key, "a table with a name", f)
    if not is_one_component(f.get("name")):
        raise _bad(where, f"{key}.name", "one file name (no '/', '\\' or '..')",
                   f.get("name"))
    if f.get("kind", "file") not in FILE_KINDS:
        raise _bad(where, f"{key}.kind", " or ".join(f"'{k}'" for k in FILE_KINDS), f["kind"])
    if "size" in f and not _is_count(f["size"]):
        raise _bad(where, f"{key}.size", "an integer number of bytes", f["size"])
    for field_name in ("md5", "sha256", "gdrive_id"):
        if field_name in f and not isinstance(f[field_name], str):
            raise _bad(where, f"{key}.{field_name}", "a string", f[field_name])
    if "urls" in f and not _is_list_of(f["urls"], str):
        raise _bad(where, f"{key}.urls", "a list of strings", f["urls"])


def _check_entry(name: str, d: dict[str, Any], source: str) -> None:
    """Refuse a dataset table whose name or fields could not work (or could escape raw/)."""
    if not is_one_component(name):
        raise ConfigError(f"{source}: dataset name {name!r} must be one folder name (no '/', "
                          "'\\', '..' and not empty), as it becomes raw/<name>/. Rename the "
                          "table.")
    where = f"{source} [{name}]"
    for key in ("title", "access", "format"):
        if key not in d:
            raise ConfigError(f"{where}: missing '{key}'. Add it, see the shipped datasets.toml.")
    _check_scalars(where, d)
    if d["access"] not in ACCESS_KINDS:
        raise ConfigError(f"{where}: access must be one of {', '.join(ACCESS_KINDS)}, "
                          f"not '{d['access']}'.")
    _check_tables(where, d)
    files = d.get("files", [])
    if not isinstance(files, list):
        raise _bad(where, "files", "a list of [[" + name + ".files]] tables", files)
    for i, f in enumerate(files):
        _check_file(where, i, f)


def _spec(name: str, d: dict[str, Any], source: str) -> DatasetSpec:
    _check_entry(name, d, source)
    files = []
    for f in d.get("files", []):
        files.append(FileSpec(name=f["name"], kind=f.get("kind", "file"), size=f.get("size"),
                              md5=f.get("md5"), sha256=f.get("sha256"),
                              gdrive_id=f.get("gdrive_id"), urls=_tuple(f.get("urls"))))
    attrs = d.get("attributes", {})
    size = d.get("image_size")
    return DatasetSpec(
        name=name, title=d["title"], access=d["access"], format=d["format"],
        license=d.get("license", ""), homepage=d.get("homepage", ""),
        access_note=d.get("access_note", ""), files=tuple(files),
        mirrors=_tuple(d.get("mirrors")), image_count=d.get("image_count"),
        image_size=tuple(size) if size else None, image_dir=d.get("image_dir", ""),
        default_crop=d.get("default_crop"), splits=dict(d.get("splits", {})),
        attributes=_tuple(attrs.get("names")),
        exclusive_groups=tuple(tuple(g) for g in attrs.get("exclusive_groups", ())),
        default_selected=_tuple(attrs.get("default_selected")),
        rendered=_tuple(attrs.get("rendered")), expressions=_tuple(d.get("expressions")),
        angles=_tuple(d.get("angles")), default_angles=_tuple(d.get("default_angles")),
        gazes=_tuple(d.get("gazes")), filename_pattern=d.get("filename_pattern", ""),
        subjects=d.get("subjects"), attrs=_tuple(d.get("attrs")),
        checkpoint_files=_tuple(d.get("checkpoint_files")), raw=d,
    )


def load_registry(home: Path | None = None) -> Registry:
    """The shipped registry, extended (and field-by-field overridden) by
    `<home>/datasets.toml` when that file exists."""
    sources = ["starcli/datasets.toml"]
    data = tomllib.loads(shipped_registry_text())
    user_file = home / "datasets.toml" if home is not None else None
    if user_file is not None and user_file.is_file():
        try:
            user = tomllib.loads(user_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{user_file}: not valid TOML ({exc}). Fix or remove the file.") \
                from None
        aliases = list(data.get("aliases", [])) + list(user.get("aliases", []))
        data = _merge(data, user)
        data["aliases"] = aliases
        sources.append(str(user_file))
    datasets = {}
    for name, value in data.items():
        if isinstance(value, dict):
            datasets[name] = _spec(name, value, sources[-1])
    aliases = []
    for pair in data.get("aliases", []):
        if len(pair) != 2 or not all(isinstance(p, str) and ":" in p for p in pair):
            raise ConfigError(f"aliases entry {pair!r} in {sources[-1]} must be two "
                              "'format:label' strings.")
        aliases.append((pair[0], pair[1]))
    return Registry(datasets=datasets, aliases=tuple(aliases), sources=tuple(sources))
