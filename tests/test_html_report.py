"""report.html (`starcli eval`) and index.html (`starcli translate --html`): the pages hold the
tables, escape every name, every image resolves offline, and headless Chromium draws them with
every image loaded."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from starcli.data.dataset import joint_layout, open_prepared
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.evaluate import EvalConfig, evaluate
from starcli.report import write_report

HOSTILE = '<script>alert("x")</script>&amp;'


def _test_module(name: str):
    # pytest runs with --import-mode=importlib, so sibling test files are not importable.
    spec = importlib.util.spec_from_file_location(f"_html_{name}",
                                                  Path(__file__).with_name(name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


te = _test_module("test_evaluate")
tt = _test_module("test_translate")


class Page(HTMLParser):
    """What a page holds: its <img> attributes, its links, its tables and its text."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.tables = 0
        self.text: list[str] = []
        self.feed(source)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "a":
            self.links.append(dict(attrs).get("href") or "")
        elif tag == "table":
            self.tables += 1
        elif tag == "script":
            raise AssertionError("a page must hold no script")

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(self.text)


def _resolves(page: Path, src: str) -> bool:
    """A data: URI of a PNG, or a relative link to a file next to the page."""
    if src.startswith("data:"):
        head, _, payload = src.partition(",")
        return head == "data:image/png;base64" and \
            base64.b64decode(payload).startswith(b"\x89PNG")
    assert "://" not in src and not src.startswith("/"), src  # relative, nothing to fetch
    return (page.parent / os.fsdecode(unquote_to_bytes(src))).is_file()


def check_page(page: Path) -> Page:
    source = page.read_bytes().decode("utf-8")  # strict: valid UTF-8 throughout
    parsed = Page(source)
    assert parsed.images
    for img in parsed.images:
        assert _resolves(page, img["src"] or ""), img["src"][:80]
    for link in parsed.links:
        if not link.startswith("../"):  # links into the page's folder must resolve
            assert _resolves(page, link), link
    return parsed


# --- eval ------------------------------------------------------------------------------------

@pytest.fixture
def eval_out(home, tmp_path):
    te.write_bands(home, "sq-celeba", "celeba", {"train": 160, "test": 20})
    run = te._tiny_run(tmp_path, joint_layout([open_prepared(home, "sq-celeba")]))
    report = evaluate(EvalConfig(checkpoint=run, metrics=("accuracy", "reconstruction"),
                                 num_images=12, classifier_epochs=2, batch_size=5,
                                 device="cpu"))
    assert Path(report["files"]["html"]) == Path(report["out"]) / "report.html"
    return Path(report["out"])


def test_eval_report_html_holds_the_report(eval_out, home):
    page = check_page(eval_out / "report.html")
    text = page.all_text
    for wanted in ("Summary (mean over all targets)", "success (eligible)", "Black_Hair",
                   "Male=0", "data digest (sq-celeba)", "classifier (sq-celeba)",
                   "step-00000005", "Worst cases", "command"):
        assert wanted in text, wanted
    assert page.tables >= 2  # the summary and the per-target rows
    srcs = [i["src"] for i in page.images]
    assert "samples-sq-celeba.png" in srcs and "accuracy.png" in srcs
    assert open_prepared(home, "sq-celeba").content_digest() in text
    # Worst cases come from the whole test split (eval keeps the first failed faces).
    assert "faces without it failed" in text
    report = json.loads((eval_out / "report.json").read_text())
    failed = {r["target"]: r["eligible"] - round((r["success"] or 0) * r["eligible"])
              for r in report["datasets"][0]["targets"]}
    assert any(n > 0 for n in failed.values())
    assert sum(i["src"].startswith("data:image/png") for i in page.images) == \
        sum(min(n, 6) for n in failed.values())


class _Judge:
    """A classifier that reads the first label from the top-left pixel."""

    def __init__(self, names) -> None:
        self.space = LabelSpace("d", "celeba", "multilabel", tuple(names))
        self.meta = {"content": "ab" * 32, "arch": {"width": 8}}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        on = x[:, 0, 0, 0] > 0
        return torch.stack([on] + [torch.zeros_like(on)] * (self.space.width - 1), 1)


def _row(target: str, label: str, value: int) -> dict:
    return {"target": target, "label": label, "value": value, "eligible": 3, "success": 0.5,
            "accuracy": 0.5, "ceiling": 1.0, "retention": None, "identity_l1": 0.1,
            "identity_l1_frame": 0.05, "cycle_l1": 0.2, "fid": None}


def test_names_are_escaped_and_worst_cases_and_styles_shown(tmp_path):
    """Labels and dataset names are text, never markup; the v2 style figures get a table;
    the failed faces are the grid faces the judge does not read as the target."""
    names = [HOSTILE, "Male"]
    inputs = np.zeros((4, 8, 8, 3), np.uint8)
    inputs[:2] = 255  # faces 0 and 1 carry the first label before
    outputs = np.zeros((4, 8, 8, 3), np.uint8)
    outputs[[0, 2]] = 255  # after: faces 1 and 3 failed
    rows = [_row(HOSTILE, HOSTILE, 1), _row("Male=1", "Male", 1)]
    styles = {"styles": 10, "images": 4, "domains": ["female", HOSTILE],
              "latent": {"success": 0.5, "pooled": 0.5, "diversity_l1": 0.3,
                         "per_domain": {"female": 0.25, HOSTILE: 0.75},
                         "distinct": {"Black_Hair+Blond_Hair": 1.5}},
              "reference": {"success": 0.4, "pooled": 0.4, "identity_l1": 0.2,
                            "identity_l1_frame": 0.1, "style_match": {},
                            "per_domain": {"female": 0.3, HOSTILE: 0.5}}}
    # The dataset name is part of a file name (samples-<dataset>.png): no slash in it.
    section = {"dataset": 'set&<b>"x"', "kind": "multilabel", "split": "test",
               "images": 4, "classifier": {"path": "/c/judge.safetensors", "epochs": 2,
                                           "train_images": 10},
               "targets": rows, "mean": rows[0], "styles": styles,
               "_grid": (inputs, [(HOSTILE, outputs), ("Male=1", outputs)]),
               "_judge": _Judge(names)}
    report = {"checkpoint": f"/runs/{HOSTILE}", "step": 3, "split": "test", "metrics": ["x"],
              "seed": 0, "device": "cpu", "precision": "fp32",
              "fid": {"skipped": f"no weights {HOSTILE}"},
              "command": ["starcli", "eval", "-c", f"runs/{HOSTILE}"],
              "summary": {**rows[0], "images": 4, "targets": 2, "latent_success": 0.5,
                          "reference_success": 0.4},
              "datasets": [section], "transfer": None}
    files = write_report(tmp_path, report)
    page_path = Path(files["html"])
    source = page_path.read_text("utf-8")
    assert "<script>" not in source and 'alert("x")' not in source
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp;" in source
    page = check_page(page_path)
    text = page.all_text
    assert HOSTILE in text and 'set&<b>"x"' in text  # shown as the text they are
    assert "Style figures" in text and "latent-guided success" in text
    assert "starcli eval -c" in text and "abab" in text
    assert f"{HOSTILE}: 2 of 4 failed" in text
    assert "Male=1: 4 of 4 failed" in text  # the judge never reads Male
    faces = [i for i in page.images if (i["src"] or "").startswith("data:")]
    assert len(faces) == 2 + 4
    # Faces that did not have the target first (face 3 before face 1).
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", source)
    assert captions[:2] == ["did not have it", "had it before"]


# --- translate -------------------------------------------------------------------------------

def _hostile_inputs(src: Path) -> None:
    tt.write_images(src, 2)
    os.rename(src / "img1.png", tt._bytes_name(src, b'\xff-<b>"face"&amp;.png'))
    (src / "<i>not an image<i>&.jpg").write_text("nope")


@pytest.fixture
def translate_out(tmp_path):
    path, _, _ = tt.make_checkpoint(tmp_path / "run", LabelLayout((tt.CELEBA,)))
    src = tmp_path / "in"
    _hostile_inputs(src)
    from starcli.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["translate", str(src), "--to", "Blond_Hair",
                                      "--to", "Male=flip", "-c", str(path), "-o", str(out),
                                      "--device", "cpu", "--precision", "fp32", "--grid",
                                      "--html"])
    assert result.exit_code == 0, result.output
    assert "index.html" in result.output
    return out


def test_translate_index_shows_inputs_beside_outputs_and_skips(translate_out):
    page_path = translate_out / "index.html"
    source = page_path.read_text("utf-8")
    assert "<i>" not in source and "<b>" not in source
    page = check_page(page_path)
    text = page.all_text
    assert "\\xff-<b>\"face\"&amp;.png" in text  # printable, escaped, shown as text
    assert "<i>not an image<i>&.jpg" in text and "not an image (" in text
    assert "Skipped (1)" in text and "Translated (2 inputs)" in text
    # Per input: its crop and one output per target; the crop links to the original file.
    assert len(page.images) == 2 * 3
    assert sum(link.startswith("../in/") for link in page.links) == 2
    outputs = {i["src"] for i in page.images} - {i["src"] for i in page.images
                                                 if i["src"].startswith("_html/")}
    assert "Blond_Hair/%FF-%3Cb%3E%22face%22%26amp%3B.png" in outputs


def test_translate_without_html_writes_no_page(tmp_path):
    path, _, _ = tt.make_checkpoint(tmp_path / "run", LabelLayout((tt.CELEBA,)))
    tt.write_images(tmp_path / "in", 1)
    tt.run(tmp_path, [tmp_path / "in"], ["Blond_Hair"], path)
    assert not (tmp_path / "out" / "index.html").exists()


# --- in a browser ----------------------------------------------------------------------------

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), "--headless", "--disable-gpu", "--no-sandbox",
                           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}",
                           *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(_chromium() is None,
                    reason="no chromium binary on PATH (apt-get install -y chromium)")
@pytest.mark.parametrize("which", ["eval", "translate"])
def test_pages_load_in_headless_chromium(which, request, tmp_path):
    out = request.getfixturevalue("eval_out" if which == "eval" else "translate_out")
    page = out / ("report.html" if which == "eval" else "index.html")
    shot = tmp_path / "shot.png"
    run = _browser(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    assert shot.is_file(), run.stderr[-2000:]
    colours = Image.open(shot).convert("RGB").getcolors(1 << 24)
    assert colours is not None and len(colours) > 1, "the screenshot is one colour"

    # Each <img> records whether it loaded; the copy sits beside the page (same links).
    source = page.read_text("utf-8")
    n = source.count("<img ")
    probe = page.with_name("_probe-" + page.name)
    probe.write_text(source.replace("<img ", '<img onload="this.dataset.state=\'loaded\'" '
                                             'onerror="this.dataset.state=\'error\'" '),
                     "utf-8")
    run = _browser(tmp_path, "--virtual-time-budget=2000", "--dump-dom", probe.as_uri())
    probe.unlink()
    images = Page(run.stdout).images
    assert len(images) == n, run.stderr[-2000:]
    states = [i.get("data-state") for i in images]
    assert "error" not in states, [i["src"][:60] for i in images if i.get("data-state") != "loaded"]
    assert states == ["loaded"] * n
