"""The files `starcli eval` leaves behind: report.json, report.md, report.html, a sample grid
per dataset (inputs and their translation to every target) and a bar chart of per-target
accuracy against the real-image ceiling. Drawn with PIL only; report.html (`starcli.html`)
also shows, per target, the grid faces the classifier does not read as the target."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from starcli.formatting import classification_error_sentence, pct
from starcli.formatting import num as _num
from starcli.utils import atomic_write_bytes, atomic_write_text

__all__ = ["write_report", "write_json", "render_markdown", "sample_grid", "accuracy_chart",
           "worst_cases", "pct"]

_WORST = 6  # worst-case faces shown per target in report.html
_MIN_CELL = 96  # grid cells are upscaled (nearest) to at least this many pixels
_BG = (255, 255, 255)
_INK = (20, 20, 20)
_GRID = (225, 225, 225)
_SUCCESS = (46, 110, 180)
_ACCURACY = (160, 195, 230)
_CEILING = (200, 60, 40)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def sample_grid(inputs: np.ndarray, columns: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Rows of faces: the input, then its translation for each (title, images) column."""
    n = len(inputs)
    size = inputs.shape[1]
    scale = max(1, math.ceil(_MIN_CELL / size))
    cell = size * scale
    header = 20
    cols = [("input", inputs), *columns]
    grid = Image.new("RGB", (len(cols) * (cell + 2) + 2, header + n * (cell + 2) + 2), _BG)
    draw = ImageDraw.Draw(grid)
    font = _font(12)
    for j, (title, images) in enumerate(cols):
        x = 2 + j * (cell + 2)
        draw.text((x + 2, 3), _fit(draw, title, font, cell - 4), fill=_INK, font=font)
        for i in range(min(n, len(images))):
            face = Image.fromarray(np.ascontiguousarray(images[i]))
            if scale > 1:
                face = face.resize((cell, cell), Image.NEAREST)
            grid.paste(face, (x, header + 2 + i * (cell + 2)))
    return grid


def accuracy_chart(rows: list[dict[str, Any]], title: str) -> Image.Image:
    """Horizontal bars per target: success (dark), accuracy over all images (light), and the
    classifier's real-image accuracy for that label as a red tick (the ceiling)."""
    font, small = _font(13), _font(11)
    label_w, bar_w, value_w = 230, 460, 150
    row_h, top = 26, 64
    width = label_w + bar_w + value_w + 20
    height = top + row_h * len(rows) + 30
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill=_INK, font=font)
    legend = [(_SUCCESS, "success (faces without the target before)"),
              (_ACCURACY, "accuracy (all faces)"), (_CEILING, "ceiling (real images)")]
    x = 10
    for colour, text in legend:
        draw.rectangle((x, 34, x + 12, 46), fill=colour)
        draw.text((x + 16, 33), text, fill=_INK, font=small)
        x += 28 + int(draw.textlength(text, font=small))
    x0 = label_w
    for k in range(5):  # gridlines at 0, 25, 50, 75, 100 %
        gx = x0 + bar_w * k // 4
        draw.line((gx, top - 4, gx, top + row_h * len(rows)), fill=_GRID)
        draw.text((gx - 10, top + row_h * len(rows) + 4), f"{25 * k}%", fill=_INK, font=small)
    for i, row in enumerate(rows):
        y = top + i * row_h
        draw.text((10, y + 6), _fit(draw, row["name"], font, label_w - 20), fill=_INK, font=font)
        acc, suc, ceil = row.get("accuracy"), row.get("success"), row.get("ceiling")
        if acc is not None:
            draw.rectangle((x0, y + 3, x0 + round(bar_w * acc), y + row_h - 3), fill=_ACCURACY)
        if suc is not None:
            draw.rectangle((x0, y + 8, x0 + round(bar_w * suc), y + row_h - 8), fill=_SUCCESS)
        if ceil is not None:
            cx = x0 + round(bar_w * ceil)
            draw.line((cx, y + 1, cx, y + row_h - 1), fill=_CEILING, width=3)
        text = f"{pct(suc)} / {pct(acc)}"
        draw.text((x0 + bar_w + 10, y + 6), text, fill=_INK, font=small)
    return img


def render_markdown(report: dict[str, Any], files: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [f"# starcli eval: step {report['step']}", "",
             f"- checkpoint: `{report['checkpoint']}`",
             f"- split: {report['split']}, images: {s['images']}, "
             f"metrics: {', '.join(report['metrics'])}", ""]
    fid = report.get("fid") or {}
    if fid.get("skipped"):
        lines += [f"> {fid['skipped']}", ""]
    lines += ["## Summary (mean over all targets)", "", "| metric | value |", "|---|---|",
              f"| success (faces without the target before) | {pct(s['success'])} |",
              f"| accuracy (all faces) | {pct(s['accuracy'])} |",
              f"| classifier on real images (ceiling) | {pct(s['ceiling'])} |",
              f"| attribute retention (non-targeted labels unchanged) | "
              f"{pct(s.get('retention'))} |",
              f"| identity L1, whole image | {_num(s.get('identity_l1'))} |",
              f"| identity L1, outer frame (Male flips excluded) | "
              f"{_num(s.get('identity_l1_frame_no_male'))} |",
              f"| identity L1, outer frame (Male flips) | "
              f"{_num(s.get('identity_l1_frame_male'))} |",
              f"| cycle L1 | {_num(s.get('cycle_l1', s.get('reconstruction_l1')))} |",
              f"| transfer (CelebA-format faces to one-hot classes) | "
              f"{pct(s.get('transfer'))} |",
              f"| FID | {_num(s['fid'], 2)} |", ""]
    for sec in report["datasets"]:
        lines += [f"## {sec['dataset']} ({sec['kind']}, {sec['images']} {sec['split']} images)",
                  ""]
        clf = sec.get("classifier")
        if clf and clf.get("real_accuracy"):
            real = clf["real_accuracy"]
            per = ", ".join(f"{k} {pct(v)}" for k, v in real["per_label"].items())
            lines += [f"Classifier accuracy on real images (ceiling): mean {pct(real['mean'])}"
                      f" ({per}).", ""]
        err = sec.get("classification_error")
        if err:
            sentence = classification_error_sentence(err)
            lines += [sentence[0].upper() + sentence[1:] + ".", ""]
        if clf and clf.get("not_conditioned"):
            lines += ["The classifier also reads labels the model does not condition on "
                      f"({', '.join(clf['not_conditioned'])}), for retention.", ""]
        if sec.get("retention_note"):
            lines += [sec["retention_note"][0].upper() + sec["retention_note"][1:] + ".", ""]
        groups = (clf or {}).get("groups") or {}
        if groups.get("real_accuracy"):
            per = ", ".join(f"{k} {pct(v)}" for k, v in groups["real_accuracy"].items())
            lines += [f"That classifier on real images (its ceiling): {per}.", ""]
        lines += ["| target | success | accuracy | ceiling | retention | identity L1 | "
                  "frame L1 | cycle L1 | FID |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sec["targets"]:
            lines.append(f"| {r['target']} | {pct(r['success'])} ({r['eligible']}) | "
                         f"{pct(r['accuracy'])} | {pct(r['ceiling'])} | "
                         f"{pct(r.get('retention'))} | {_num(r.get('identity_l1'))} | "
                         f"{_num(r.get('identity_l1_frame'))} | "
                         f"{_num(r.get('cycle_l1', r.get('reconstruction_l1')))} | "
                         f"{_num(r['fid'], 2)} |")
        m = sec["mean"]
        lines += [f"| **mean** | {pct(m['success'])} | {pct(m['accuracy'])} | "
                  f"{pct(m['ceiling'])} | {pct(m.get('retention'))} | "
                  f"{_num(m.get('identity_l1'))} | {_num(m.get('identity_l1_frame'))} | "
                  f"{_num(m.get('cycle_l1', m.get('reconstruction_l1')))} | "
                  f"{_num(m['fid'], 2)} |", ""]
        grid = files["samples"].get(sec["dataset"])
        if grid:
            lines += [f"![samples of {sec['dataset']}]({Path(grid).name})", ""]
    for t in report.get("transfer") or []:
        lines += [f"## Transfer: {t['source']} faces to {t['target_space']} classes", "",
                  f"{t['images']} {report['split']} faces of {t['source']} translated to each "
                  f"class of {t['target_space']}, judged by the {t['target_space']} classifier "
                  f"(StarGAN's joint-training result).", "",
                  "| class | success |", "|---|---|"]
        lines += [f"| {r['target']} | {pct(r['success'])} |" for r in t["targets"]]
        lines += [f"| **mean** | {pct(t['mean'])} |", ""]
    if files.get("chart"):
        lines += ["## Accuracy per target", "", f"![accuracy]({Path(files['chart']).name})", ""]
    lines += ["Success counts, in brackets, how many faces did not carry the target before. "
              "Retention is the share of faces whose every label that was not targeted reads "
              "the same to the classifier after translation as before. Identity L1 is "
              "mean |x − G(x, c_trg)| over the whole image, frame L1 the same over the outer "
              "eighth of each side. Cycle L1 is mean |x − G(G(x, c_trg), c_org)|. Pixels are in "
              "[−1, 1] at the model's size.", ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write the sample grids, the chart, report.md and report.html into `out`; returns their
    paths. Sections may carry `_grid` = (inputs, [(target, images)]) for the sample grids and
    `_judge` (the accuracy classifier) for report.html's worst cases and data digest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"json": str(out / "report.json"),
                             "markdown": str(out / "report.md"), "samples": {}, "chart": None}
    for sec in report["datasets"]:
        grid = sec.get("_grid")
        if grid and grid[0] is not None and len(grid[0]):
            inputs, columns = grid
            path = out / f"samples-{sec['dataset']}.png"
            atomic_write_bytes(path, _png(sample_grid(inputs, [c for c in columns
                                                                if c[1] is not None])))
            files["samples"][sec["dataset"]] = str(path)
        for kind, picture in (sec.get("_style_grids") or {}).items():
            path = out / f"styles-{kind}-{sec['dataset']}.png"
            atomic_write_bytes(path, _png(Image.fromarray(picture)))
            files.setdefault("style_samples", {}).setdefault(sec["dataset"], {})[kind] = \
                str(path)
    joint = len(report["datasets"]) > 1
    rows = [{"name": f"{sec['dataset']}: {r['target']}" if joint else r["target"], **r}
            for sec in report["datasets"] for r in sec["targets"]]
    if rows and any(r.get("accuracy") is not None for r in rows):
        title = f"Per-target accuracy, step {report['step']} ({report['split']} split)"
        path = out / "accuracy.png"
        atomic_write_bytes(path, _png(accuracy_chart(rows, title)))
        files["chart"] = str(path)
    atomic_write_text(out / "report.md", render_markdown(report, files))
    files["html"] = str(out / "report.html")
    atomic_write_text(out / "report.html", _render_html(report, files))
    return files


def worst_cases(section: dict[str, Any], most: int = _WORST) -> list[dict[str, Any]]:
    """Per target of a section, the faces that failed: evaluate keeps the first ones of the
    whole split that lacked the target and still do (`_worst`); without them (an older
    caller), up to `most` sample-grid faces (`_grid`) that its classifier
    (`_judge`) does not read as carrying the target after translation: {"target", "checked",
    "faces": [{"input", "output", "had"}]} with uint8 images, the faces that did not carry the
    target before first (they are the ones that count against success). Evaluate keeps no
    per-face decisions, so the grid's faces (spread over the split) are judged again here:
    a handful of classifier calls."""
    if section.get("_worst") is not None:  # kept by evaluate over the whole split
        return [{**w, "faces": w["faces"][:most]} for w in section["_worst"]]
    grid, judge = section.get("_grid"), section.get("_judge")
    if not grid or grid[0] is None or not len(grid[0]) or judge is None:
        return []
    from starcli.data.dataset import to_tensor

    inputs, columns = grid
    names = list(judge.space.names)
    before = judge.predict(to_tensor(np.ascontiguousarray(inputs))).numpy()
    rows = {r["target"]: r for r in section["targets"]}
    out = []
    for target, images in columns:
        row = rows.get(target)
        if row is None or images is None or row.get("label") not in names:
            continue
        col, want = names.index(row["label"]), bool(row.get("value", 1))
        n = min(len(images), len(inputs))
        after = judge.predict(to_tensor(np.ascontiguousarray(images[:n]))).numpy()[:, col]
        had = before[:n, col] == want
        failed = sorted(np.flatnonzero(after != want).tolist(), key=lambda i: bool(had[i]))
        out.append({"target": target, "checked": n,
                    "faces": [{"input": inputs[i], "output": images[i], "had": bool(had[i])}
                              for i in failed[:most]]})
    return out


def _render_html(report: dict[str, Any], files: dict[str, Any]) -> str:
    from starcli.html import data_uri, eval_page, png_bytes

    extras: dict[str, Any] = {"datasets": {}}
    for sec in report["datasets"]:
        judge = sec.get("_judge")
        meta = getattr(judge, "meta", None) or {}
        worst = []
        for w in worst_cases(sec):
            faces = [{"had": f["had"], "src": data_uri(png_bytes(
                np.concatenate([f["input"], f["output"]], axis=1)))} for f in w["faces"]]
            worst.append({**w, "faces": faces})
        extras["datasets"][sec["dataset"]] = {
            "digest": meta.get("content"), "arch": meta.get("arch"), "worst": worst,
            "judged": judge is not None}
    return eval_page(report, files, extras)


def write_json(out: Path, report: dict[str, Any]) -> Path:
    path = Path(out) / "report.json"
    atomic_write_text(path, json.dumps(report, indent=2, default=str) + "\n")
    return path
