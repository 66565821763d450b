"""What is on disk: the engine of `starcli datasets` and `starcli datasets show NAME`.

    list_datasets(home)                                  # registry entries + prepared folders
    show_dataset(home, "demo-celeba", grid=Path("sheet.png"))

Nothing here writes except the optional contact sheet (atomically).
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from starcli.data.labels import did_you_mean
from starcli.data.registry import DatasetSpec, load_registry
from starcli.errors import DatasetNotFoundError, ShardError, UnknownDatasetError
from starcli.paths import prepared_root, raw_dir
from starcli.utils import atomic_write_bytes

GRID_SAMPLES = 16
GRID_COLUMNS = 4
GRID_MIN_TILE = 128  # small images are scaled up (nearest) so their labels fit underneath
GRID_PAD = 4
GRID_MAX_LINES = 4


def _folder_usage(folder: Path) -> dict[str, Any]:
    """File count and bytes under `folder` (recursive, hidden entries included)."""
    files = size = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file():
                    files += 1
                    size += entry.stat().st_size
            except OSError:
                continue
    return {"path": str(folder), "present": folder.is_dir(), "files": files, "bytes": size}


def _read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _prepared(home: Path, name: str) -> list[tuple[int, Path, dict | None]]:
    """(size, folder, manifest or None) for every size folder of a prepared dataset."""
    root = prepared_root(home, name)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir(), key=lambda p: (len(p.name), p.name)):
        if p.is_dir() and p.name.isdigit():
            out.append((int(p.name), p, _read_manifest(p)))
    return out


def _prepared_names(home: Path) -> list[str]:
    root = home / "prepared"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _prepared_summary(size: int, folder: Path, manifest: dict | None,
                      detail: bool = False) -> dict[str, Any]:
    shards_on_disk = sorted(p for p in folder.glob("*.h5"))
    if manifest is None:
        return {"size": size, "path": str(folder), "complete": False,
                "shards_on_disk": len(shards_on_disk),
                "bytes": sum(p.stat().st_size for p in shards_on_disk)}
    table = manifest.get("label_table", {})
    space = table.get("space", {})
    splits = manifest.get("splits", {})
    out = {
        "size": size, "path": str(folder), "complete": True,
        "images": sum(splits.values()), "splits": splits,
        "label_kind": space.get("kind"), "label_names": space.get("names", []),
        "label_columns": sorted(table.get("columns", {})),
        "shards": len(manifest.get("shards", [])),
        "bytes": sum(int(s.get("bytes", 0)) for s in manifest.get("shards", [])),
        "skipped": len(manifest.get("skipped", [])),
    }
    if detail:
        reasons: dict[str, int] = {}
        for s in manifest.get("skipped", []):
            reasons[s.get("reason", "?")] = reasons.get(s.get("reason", "?"), 0) + 1
        out.update({
            "format": manifest.get("format"), "created_by": manifest.get("created_by"),
            "crop": manifest.get("crop"), "compression": manifest.get("compression"),
            "preprocess": manifest.get("preprocess"), "source": manifest.get("source"),
            "label_table": table, "skipped_reasons": reasons,
            "skipped_examples": manifest.get("skipped", [])[:10],
            "stats": manifest.get("stats"),
        })
    return out


def _raw_info(home: Path, name: str, prepared: list[tuple[int, Path, dict | None]]
              ) -> dict[str, Any]:
    folder = raw_dir(home, name)
    if not folder.is_dir():
        # Folder datasets live where the user keeps them; the manifest says where.
        for _, _, manifest in prepared:
            source = (manifest or {}).get("source", {}).get("raw_dir")
            if source and (manifest or {}).get("format") == "folder":
                folder = Path(source)
                break
    if not folder.is_dir():
        return {"path": str(folder), "present": False, "files": 0, "bytes": 0}
    return _folder_usage(folder)


def _entry(home: Path, name: str, spec: DatasetSpec | None, detail: bool = False
           ) -> dict[str, Any]:
    prepared = _prepared(home, name)
    formats = [m.get("format") for _, _, m in prepared if m]
    entry = {
        "name": name,
        "title": spec.title if spec else "your own images (starcli prepare folder)",
        "access": spec.access if spec else "local",
        "format": spec.format if spec else (formats[0] if formats else "folder"),
        "in_registry": spec is not None,
        "raw": _raw_info(home, name, prepared),
        "prepared": [_prepared_summary(s, f, m, detail) for s, f, m in prepared],
    }
    return entry


def list_datasets(home: Path) -> list[dict[str, Any]]:
    """Every registry entry and every prepared folder: access, format, raw files (count,
    bytes) and prepared sizes with images, splits and label names."""
    home = Path(home)
    registry = load_registry(home)
    names = registry.names() + [n for n in _prepared_names(home) if n not in registry.datasets]
    return [_entry(home, n, registry.datasets.get(n)) for n in names]


def _registry_info(spec: DatasetSpec) -> dict[str, Any]:
    info = {
        "title": spec.title, "access": spec.access, "format": spec.format,
        "license": spec.license, "homepage": spec.homepage, "access_note": spec.access_note,
        "image_count": spec.image_count,
        "image_size": list(spec.image_size) if spec.image_size else None,
        "default_crop": spec.default_crop, "splits": spec.splits,
        "files": [f.name for f in spec.files],
    }
    if spec.attributes:
        info.update({"attributes": list(spec.attributes),
                     "exclusive_groups": [list(g) for g in spec.exclusive_groups],
                     "default_selected": list(spec.default_selected)})
    if spec.expressions:
        info.update({"expressions": list(spec.expressions), "gazes": list(spec.gazes),
                     "angles": list(spec.angles), "default_angles": list(spec.default_angles)})
    if spec.attrs:
        info["attrs"] = list(spec.attrs)
    return info


def show_dataset(home: Path, name: str, grid: Path | None = None,
                 size: int | None = None) -> dict[str, Any]:
    """Registry facts, raw files and every prepared size (manifest, label table, skipped).
    With `grid`, also write a PNG contact sheet of ~16 prepared images with their labels
    (from the prepared size `size`, default the largest)."""
    home = Path(home)
    registry = load_registry(home)
    spec = registry.datasets.get(name)
    if spec is None and name not in _prepared_names(home):
        choices = registry.names() + _prepared_names(home)
        raise UnknownDatasetError(f"Unknown dataset '{name}'.{did_you_mean(name, choices)} "
                                  f"Known datasets: {', '.join(choices)}.")
    entry = _entry(home, name, spec, detail=True)
    entry["registry"] = _registry_info(spec) if spec else None
    if grid is not None:
        entry["grid"] = write_grid(home, name, Path(grid), size)
    return entry


# --------------------------------------------------------------------------------------------
# Contact sheet


def _sample_label(table: dict, labels: dict[str, np.ndarray], row: int) -> str:
    column = table.get("source_column")
    names = table.get("space", {}).get("names", [])
    values = labels.get(column)
    if values is None:
        return "?"
    selected = table.get("selected_columns")
    if selected is not None:  # multi-label: the selected attributes that are on
        on = [n for n, c in zip(names, selected, strict=False) if values[row, c]]
        return ", ".join(on) if on else "(none)"
    index = int(values[row])
    choices = table.get("columns", {}).get(column, names)
    return str(choices[index]) if 0 <= index < len(choices) else f"#{index}"


def _pick(manifest: dict, n: int) -> list[tuple[dict, int]]:
    """n (shard entry, row) pairs spread evenly over all prepared rows."""
    shards = [s for s in manifest.get("shards", []) if int(s.get("count", 0)) > 0]
    total = sum(int(s["count"]) for s in shards)
    if total == 0:
        return []
    n = min(n, total)
    picks, wanted = [], [round(i * (total - 1) / max(n - 1, 1)) for i in range(n)]
    offset, k = 0, 0
    for shard in shards:
        count = int(shard["count"])
        while k < len(wanted) and wanted[k] < offset + count:
            picks.append((shard, wanted[k] - offset))
            k += 1
        offset += count
    return picks


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.replace(", ", ",\u0000").split("\u0000"):
        trial = f"{current} {word}".strip() if current else word
        if draw.textlength(trial, font=font) <= width or not current:
            current = trial
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > GRID_MAX_LINES:
        lines = lines[:GRID_MAX_LINES - 1] + ["…"]
    return lines


def write_grid(home: Path, name: str, path: Path, size: int | None = None) -> dict[str, Any]:
    """Write a PNG contact sheet of ~16 prepared images, each labelled underneath."""
    complete = [(s, f, m) for s, f, m in _prepared(Path(home), name) if m is not None]
    if size is not None:
        complete = [c for c in complete if c[0] == size]
    if not complete:
        at = f" at {size}px" if size else ""
        raise DatasetNotFoundError(f"{name} is not prepared{at}; run `starcli prepare {name}"
                                   f"{f' --size {size}' if size else ''}` before --grid.")
    image_size, folder, manifest = complete[-1]
    table = manifest.get("label_table", {})
    samples: list[tuple[np.ndarray, str]] = []
    for shard, row in _pick(manifest, GRID_SAMPLES):
        shard_path = folder / shard["path"]
        try:
            with h5py.File(shard_path, "r", locking=False) as f:
                pixels = f["images"][row]
                labels = {k: f["labels"][k][row:row + 1] for k in f["labels"]}
        except (OSError, KeyError) as exc:
            raise ShardError(f"Cannot read {shard_path} ({exc}); re-run "
                             f"`starcli prepare {name} --force`.") from exc
        samples.append((pixels, _sample_label(table, labels, 0)))
    if not samples:
        raise DatasetNotFoundError(f"{name} at {image_size}px has no images to show.")

    scale = max(1, math.ceil(GRID_MIN_TILE / image_size))
    tile = image_size * scale
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), "Ag", font=font)
    line_h = bottom - top + 2
    wrapped = [_wrap(probe, text, font, tile) for _, text in samples]
    band = max(len(w) for w in wrapped) * line_h + GRID_PAD
    cols = min(GRID_COLUMNS, len(samples))
    rows = math.ceil(len(samples) / cols)
    width = cols * tile + (cols + 1) * GRID_PAD
    height = rows * (tile + band) + (rows + 1) * GRID_PAD
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ((pixels, _), lines) in enumerate(zip(samples, wrapped, strict=True)):
        x = GRID_PAD + (i % cols) * (tile + GRID_PAD)
        y = GRID_PAD + (i // cols) * (tile + band + GRID_PAD)
        img = Image.fromarray(np.asarray(pixels, np.uint8))
        if scale > 1:
            img = img.resize((tile, tile), Image.NEAREST)
        sheet.paste(img, (x, y))
        for j, line in enumerate(lines):
            draw.text((x, y + tile + 2 + j * line_h - top), line, fill="black", font=font)

    path = Path(path)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return {"path": str(path), "width": width, "height": height, "samples": len(samples),
            "image_size": image_size, "labels": [t for _, t in samples]}


__all__ = ["list_datasets", "show_dataset", "write_grid"]
