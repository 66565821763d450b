"""Pages for people: `starcli eval`'s report.html and `starcli translate --html`'s index.html.

Plain HTML with one inline style sheet: no script, nothing fetched from the network. Images
are data: URIs (base64 PNG) or links relative to the page, so a page reads offline and its
folder can be moved. Every string that comes from a file name or a label goes through `text`
(html.escape); names that are not UTF-8 are first made printable (`printable_path`), and
links keep their bytes (`href`), so such a file still opens.

    html_text = eval_page(report, files, extras)        # report.write_report writes it
    write_translate_index(out, rows, columns, info, load_crop)
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from starcli.formatting import classification_error_sentence, num, pct
from starcli.imaging import printable_path
from starcli.utils import atomic_write_bytes, atomic_write_text

__all__ = ["Raw", "text", "href", "data_uri", "png_bytes", "eval_page", "translate_page",
           "write_translate_index", "INDEX_NAME", "THUMB_DIR"]

INDEX_NAME = "index.html"
THUMB_DIR = "_html"  # translate --html: the model's input crops, as the page shows them
_MIN_FACE = 96  # faces smaller than this are enlarged (nearest), as in the PNG grids

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #141414; background: #fff;
       margin: 24px; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f4f7; }
tr.mean td { font-weight: bold; background: #fafafa; }
dl.run { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dl.run dt { color: #555; } dl.run dd { margin: 0; }
code { background: #f2f4f7; padding: 0 3px; word-break: break-all; }
img { image-rendering: pixelated; border: 1px solid #ddd; }
img.thumb { width: 128px; height: auto; }
figure { display: inline-block; margin: 4px 8px 8px 0; text-align: center; }
figcaption { font-size: 12px; color: #555; }
p.note { color: #555; max-width: 900px; }
td.skip { text-align: left; color: #8a1c00; }
"""


class Raw(str):
    """A string that is HTML already (built here from escaped parts): `text` passes it on."""


def text(value: Any) -> str:
    """`value` as escaped HTML text; None as a dash, as the Markdown report writes it."""
    if isinstance(value, Raw):
        return value
    if value is None:
        return "–"
    return html.escape(printable_path(str(value)), quote=True)


def href(relative: str | os.PathLike) -> str:
    """A URL for a path relative to the page: its bytes percent-encoded (a file name that is
    not UTF-8 keeps its bytes, so the link still finds the file)."""
    from urllib.parse import quote

    return quote(os.fsencode(Path(relative).as_posix()), safe="/")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_bytes(rgb: np.ndarray, minimum: int = _MIN_FACE) -> bytes:
    """(H, W, 3) uint8 as PNG bytes, enlarged by a whole factor (nearest) to `minimum` high."""
    from PIL import Image

    k = max(1, -(-minimum // max(1, rgb.shape[0])))
    if k > 1:
        rgb = np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _img(src: str, alt: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<img src="{html.escape(src, quote=True)}" alt="{text(alt)}"{klass}>'


def _table(header: Sequence[Any], rows: Iterable[Sequence[Any]],
           classes: Sequence[str] | None = None) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{text(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{text(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _dl(pairs: Iterable[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{text(k)}</dt><dd>{text(v)}</dd>" for k, v in pairs)
    return f'<dl class="run">{items}</dl>'


def _page(title: str, body: Sequence[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>",
                      '<meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{text(title)}</title>", f"<style>{_CSS}</style>", "</head>",
                      "<body>", *body, "</body>", "</html>", ""])


def _sentence(s: str) -> str:
    return s[0].upper() + s[1:] + "." if s else s


# --- eval: report.html --------------------------------------------------------------------------

_ROW_HEADER = ("target", "success (eligible)", "accuracy", "ceiling", "retention",
               "identity L1", "frame L1", "cycle L1", "FID")


def _row_cells(name: Any, r: dict[str, Any], eligible: bool = True) -> list[Any]:
    success = pct(r.get("success"))
    if eligible and r.get("eligible") is not None:
        success += f" ({r['eligible']})"
    return [name, success, pct(r.get("accuracy")), pct(r.get("ceiling")),
            pct(r.get("retention")), num(r.get("identity_l1")), num(r.get("identity_l1_frame")),
            num(r.get("cycle_l1", r.get("reconstruction_l1"))), num(r.get("fid"), 2)]


def _summary_table(report: dict[str, Any]) -> str:
    s = report["summary"]
    rows = [("success (faces without the target before)", pct(s.get("success"))),
            ("accuracy (all faces)", pct(s.get("accuracy"))),
            ("classifier on real images (ceiling)", pct(s.get("ceiling"))),
            ("attribute retention (non-targeted labels unchanged)", pct(s.get("retention"))),
            ("identity L1, whole image", num(s.get("identity_l1"))),
            ("identity L1, outer frame (Male flips excluded)",
             num(s.get("identity_l1_frame_no_male"))),
            ("identity L1, outer frame (Male flips)", num(s.get("identity_l1_frame_male"))),
            ("cycle L1", num(s.get("cycle_l1", s.get("reconstruction_l1")))),
            ("transfer (CelebA-format faces to one-hot classes)", pct(s.get("transfer"))),
            ("FID", num(s.get("fid"), 2))]
    if s.get("latent_success") is not None or s.get("reference_success") is not None:
        rows += [("latent-guided success (StarGAN v2)", pct(s.get("latent_success"))),
                 ("reference-guided success (StarGAN v2)", pct(s.get("reference_success"))),
                 ("diversity L1 between a face's latent styles", num(s.get("diversity_l1")))]
    return _table(("metric", "value"), rows)


def _styles_section(st: dict[str, Any]) -> list[str]:
    lat, ref = st.get("latent") or {}, st.get("reference") or {}
    domains = list(st.get("domains") or (lat.get("per_domain") or {}).keys())
    rows = [(d, pct((lat.get("per_domain") or {}).get(d)),
             pct((ref.get("per_domain") or {}).get(d))) for d in domains]
    rows.append(("mean", pct(lat.get("success")), pct(ref.get("success"))))
    out = [f"<h3>Style figures ({text(st.get('styles'))} latent styles per face, "
           f"{text(st.get('images'))} faces)</h3>",
           _table(("target domain", "latent-guided success", "reference-guided success"),
                  rows, classes=[""] * (len(rows) - 1) + ["mean"])]
    figures = [("pooled latent success", pct(lat.get("pooled"))),
               ("pooled reference success", pct(ref.get("pooled"))),
               ("diversity L1 (pairs of one face's latent outputs)",
                num(lat.get("diversity_l1"))),
               ("reference-guided identity L1, whole image", num(ref.get("identity_l1"))),
               ("reference-guided identity L1, outer frame", num(ref.get("identity_l1_frame")))]
    figures += [(f"distinct {g} among a face's latent outputs", num(v, 2))
                for g, v in (lat.get("distinct") or {}).items()]
    figures += [(f"reference's {g} kept", pct(v))
                for g, v in (ref.get("style_match") or {}).items()]
    out.append(_table(("figure", "value"), figures))
    return out


def _worst_section(worst: Sequence[dict[str, Any]] | None, judged: bool) -> list[str]:
    out = ["<h3>Worst cases: faces the classifier does not read as the target</h3>"]
    if not judged:
        return out + ['<p class="note">Needs the accuracy metric (its classifier judges the '
                      "translations).</p>"]
    if not worst:
        return out + ['<p class="note">No sample-grid faces to judge.</p>']
    out.append('<p class="note">Test faces that did not carry the target and that the '
               "classifier still does not read as carrying it after translation (input, then "
               "its translation): the faces that count against success.</p>")
    for w in worst:
        faces = w.get("faces") or []
        if w.get("failed") is not None:  # evaluate's: the whole split's eligible faces
            out.append(f"<h4>{text(w['target'])}: {text(w['failed'])} of "
                       f"{text(w.get('checked'))} faces without it failed (the first "
                       f"{len(faces)} shown)</h4>")
        else:
            out.append(f"<h4>{text(w['target'])}: {len(faces)} of {text(w.get('checked'))} "
                       "failed</h4>")
        if not faces:
            continue
        figs = []
        for f in faces:
            caption = "had it before" if f.get("had") else "did not have it"
            figs.append(f'<figure>{_img(f["src"], w["target"] + " failed")}'
                        f"<figcaption>{text(caption)}</figcaption></figure>")
        out.append("<div>" + "".join(figs) + "</div>")
    return out


def _backbones(report: dict[str, Any], extras: dict[str, Any]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for sec in report["datasets"]:
        clf = sec.get("classifier") or {}
        ext = (extras.get("datasets") or {}).get(sec["dataset"]) or {}
        if clf.get("path"):
            parts = [Path(clf["path"]).name]
            if ext.get("arch"):
                parts.append(", ".join(f"{k} {v}" for k, v in ext["arch"].items()))
            if clf.get("epochs") is not None:
                parts.append(f"{clf['epochs']} epochs on {clf.get('train_images')} images")
            pairs.append((f"classifier ({sec['dataset']})", "; ".join(map(str, parts))))
        groups = clf.get("groups") or {}
        if groups.get("path"):
            pairs.append((f"group classifier ({sec['dataset']})", Path(groups["path"]).name))
    for key in ("fid", "lpips"):  # any feature network the report names
        info = report.get(key)
        if not isinstance(info, dict):
            continue
        if info.get("skipped"):
            pairs.append((key.upper(), f"skipped: {info['skipped']}"))
        elif info.get("weights") or info.get("kind"):
            weights = Path(str(info.get("weights", ""))).name
            pairs.append((key.upper(), f"{info.get('kind', '')} {weights}".strip()))
    return pairs


def eval_page(report: dict[str, Any], files: dict[str, Any],
              extras: dict[str, Any] | None = None) -> str:
    """report.html for an eval report (what report.json holds) and the files written next to
    it (`files` of report.write_report). `extras`: {"datasets": {name: {"digest", "arch",
    "worst", "judged"}}}, where worst faces carry an image `src` (a data: URI)."""
    extras = extras or {}
    per = extras.get("datasets") or {}
    s = report["summary"]
    run = [("checkpoint", report.get("checkpoint")), ("step", report.get("step")),
           ("split", f"{report.get('split')} ({s.get('images')} images, "
                     f"{s.get('targets')} targets)"),
           ("metrics", ", ".join(report.get("metrics") or [])),
           ("device", f"{report.get('device')} ({report.get('precision')})"),
           ("seed", report.get("seed"))]
    for sec in report["datasets"]:
        digest = (per.get(sec["dataset"]) or {}).get("digest")
        run.append((f"data digest ({sec['dataset']})",
                    digest or "unknown (recorded by the accuracy metric's classifier)"))
    run += _backbones(report, extras)
    command = report.get("command")
    if isinstance(command, list | tuple):
        import shlex

        command = shlex.join(map(str, command))
    run.append(("command", Raw(f"<code>{text(command)}</code>") if command else
                "not recorded"))
    body = [f"<h1>starcli eval: step {text(report.get('step'))}</h1>", _dl(run)]
    fid = report.get("fid") or {}
    if fid.get("skipped"):
        body.append(f'<p class="note">{text(fid["skipped"])}</p>')
    body += ["<h2>Summary (mean over all targets)</h2>", _summary_table(report)]
    for sec in report["datasets"]:
        ext = per.get(sec["dataset"]) or {}
        body.append(f"<h2>{text(sec['dataset'])} ({text(sec.get('kind'))}, "
                    f"{text(sec.get('images'))} {text(sec.get('split'))} images)</h2>")
        clf = sec.get("classifier") or {}
        real = clf.get("real_accuracy") or {}
        notes = []
        if real:
            labels = ", ".join(f"{k} {pct(v)}" for k, v in (real.get("per_label") or {}).items())
            notes.append(f"Classifier accuracy on real images (ceiling): mean "
                         f"{pct(real.get('mean'))} ({labels}).")
        if sec.get("classification_error"):
            notes.append(_sentence(classification_error_sentence(sec["classification_error"])))
        if clf.get("not_conditioned"):
            notes.append("The classifier also reads labels the model does not condition on "
                         f"({', '.join(clf['not_conditioned'])}), for retention.")
        if sec.get("retention_note"):
            notes.append(_sentence(sec["retention_note"]))
        body += [f'<p class="note">{text(n)}</p>' for n in notes]
        rows = [_row_cells(r["target"], r) for r in sec["targets"]]
        rows.append(_row_cells("mean", sec.get("mean") or {}, eligible=False))
        body.append(_table(_ROW_HEADER, rows,
                           classes=[""] * (len(rows) - 1) + ["mean"]))
        if sec.get("styles"):
            body += _styles_section(sec["styles"])
        pictures = (files.get("style_samples") or {}).get(sec["dataset"]) or {}
        for kind, title in (("latent", "Latent-guided: a row per face and domain, the input "
                                       "then styles (style j is one z in every row)"),
                            ("reference", "Reference-guided: faces across, references down, "
                                          "each cell a face in that reference's style")):
            if pictures.get(kind):
                body += [f"<h3>{text(title)}</h3>",
                         f"<p>{_img(href(Path(pictures[kind]).name), kind + ' styles')}</p>"]
        grid = (files.get("samples") or {}).get(sec["dataset"])
        if grid:
            body += ["<h3>Samples: each input, then its translation to every target</h3>",
                     f"<p>{_img(href(Path(grid).name), 'samples of ' + sec['dataset'])}</p>"]
        body += _worst_section(ext.get("worst"), bool(ext.get("judged")))
    for t in report.get("transfer") or []:
        rows = [(r["target"], pct(r["success"])) for r in t["targets"]]
        rows.append(("mean", pct(t.get("mean"))))
        body += [f"<h2>Transfer: {text(t['source'])} faces to {text(t['target_space'])} "
                 "classes</h2>",
                 f'<p class="note">{text(t["images"])} faces translated to each class, judged '
                 f"by the {text(t['target_space'])} classifier.</p>",
                 _table(("class", "success"), rows, classes=[""] * (len(rows) - 1) + ["mean"])]
    if files.get("chart"):
        body += ["<h2>Accuracy per target</h2>",
                 f"<p>{_img(href(Path(files['chart']).name), 'accuracy per target')}</p>"]
    body.append('<p class="note">Success counts, in brackets, how many faces did not carry the '
                "target before. Retention is the share of faces whose every label that was not "
                "targeted reads the same to the classifier after translation as before. "
                "Identity L1 is mean |x − G(x, c_trg)| over the whole image, frame L1 the same "
                "over the outer eighth of each side. Cycle L1 is mean |x − G(G(x, c_trg), "
                "c_org)|. Pixels are in [−1, 1] at the model's size.</p>")
    return _page(f"starcli eval: step {report.get('step')}", body)


# --- translate: index.html -----------------------------------------------------------------------

def translate_page(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
                   info: Sequence[tuple[str, Any]], thumbs: dict[int, str],
                   exists: Callable[[str], bool]) -> str:
    """index.html of a translate folder: per input its crop (`thumbs`: row index → relative
    path) beside every output (`columns`: (manifest key, what was asked)), then the skipped
    files with their reasons. Paths are relative to the page."""
    done = [(i, r) for i, r in enumerate(rows) if r.get("outputs")]
    skipped = [r for r in rows if r.get("status") in ("skipped", "not done")]
    head = ["input", *(f"{key} ({spec})" if spec != key else key for key, spec in columns)]
    if any(r.get("grid") for _, r in done):
        head.append("strip")
    table = ["<table>", "<tr>" + "".join(f"<th>{text(h)}</th>" for h in head) + "</tr>"]
    for i, r in done:
        name = r.get("relative") or Path(r["input"]).name
        cells = []
        thumb = thumbs.get(i)
        link = r.get("_link")
        picture = (_img(href(thumb), name, "thumb") if thumb else
                   '<span class="skip">input not readable now</span>')
        if link:
            picture = f'<a href="{html.escape(link, quote=True)}">{picture}</a>'
        cells.append(f"{picture}<br>{text(name)}<br><small>{text(r.get('status'))}</small>")
        for key, _spec in columns:
            rel = (r.get("outputs") or {}).get(key)
            if rel and exists(rel):
                url = href(rel)
                cells.append(f'<a href="{html.escape(url, quote=True)}">'
                             f'{_img(url, name + " → " + key, "thumb")}</a>')
            else:
                cells.append("–")
        if "strip" in head:
            grid = r.get("grid")
            cells.append(f'<a href="{html.escape(href(grid), quote=True)}">strip</a>'
                         if grid and exists(grid) else "–")
        table.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table.append("</table>")
    body = ["<h1>starcli translate</h1>", _dl(info),
            f"<h2>Translated ({len(done)} inputs)</h2>", "\n".join(table)]
    if skipped:
        body += [f"<h2>Skipped ({len(skipped)})</h2>",
                 _table(("input", "reason"), [(r.get("input"), Raw(
                     f'<span class="skip">{text(r.get("reason", ""))}</span>'))
                     for r in skipped])]
    return _page("starcli translate", body)


def write_translate_index(out: Path, rows: Sequence[dict[str, Any]],
                          columns: Sequence[tuple[str, str]], info: Sequence[tuple[str, Any]],
                          load_crop: Callable[[Path], np.ndarray | None]) -> Path:
    """Write <out>/index.html and the model-input crops it shows (<out>/_html/input-N.png);
    `load_crop(path)` frames an input as the model saw it (None or an exception: not shown).
    Each input crop links to its original file."""
    out = Path(out)
    thumbs: dict[int, str] = {}
    shown = []
    for i, r in enumerate(rows):
        if not r.get("outputs"):
            shown.append(r)
            continue
        r = dict(r)
        try:
            crop = load_crop(Path(r["input"]))
        except Exception:  # noqa: BLE001 - a file gone or changed since: the row stays
            crop = None
        if crop is not None:
            rel = f"{THUMB_DIR}/input-{i:05d}.png"
            atomic_write_bytes(out / rel, png_bytes(crop, minimum=0), durable=False)
            thumbs[i] = rel
        try:
            original = Path(os.path.relpath(Path(r["input"]).resolve(), out.resolve()))
            r["_link"] = href(original)
        except ValueError:  # another drive (Windows): no relative link
            pass
        shown.append(r)
    page = translate_page(shown, columns, info, thumbs, lambda rel: (out / rel).is_file())
    path = out / INDEX_NAME
    atomic_write_text(path, page)
    return path
