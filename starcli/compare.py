"""`starcli eval --compare RUN_A RUN_B ...`: several checkpoints through one eval, one table.

Every checkpoint is evaluated with the same settings (split, image cap, metrics, seed, and so
the same test faces, targets and classifier), each into its own report folder under the
output folder; compare.json, compare.md and compare.html then hold one table of the headline
figures (a column per checkpoint) and one of success per target.

    result = compare(EvalConfig(metrics=("accuracy",), out=Path("cmp")),
                     [Path("runs/a"), Path("runs/b")])
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from starcli.errors import UsageError
from starcli.progress import Progress, log
from starcli.utils import atomic_write_text

__all__ = ["compare", "FIGURES"]

# (summary key, label, percent?) rows of the headline table.
FIGURES = (("success", "success", True), ("retention", "retention", True),
           ("identity_l1", "identity L1 (whole)", False),
           ("identity_l1_frame_no_male", "identity L1 (frame, no Male flips)", False),
           ("cycle_l1", "cycle L1", False), ("transfer", "CelebA→RaFD transfer", True),
           ("latent_success", "v2 latent success", True),
           ("reference_success", "v2 reference success", True),
           ("diversity_l1", "v2 latent diversity L1", False))


def _slug(path: Path, i: int) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.name or "run").strip("-") or "run"
    return f"{i + 1:02d}-{name}"


def _cell(value: Any, pct: bool) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if pct else f"{value:.3f}"


def compare(cfg, checkpoints: Sequence[Path], progress: Progress | None = None
            ) -> dict[str, Any]:
    """Evaluate each of `checkpoints` with `cfg` (an EvalConfig; its `out` is the comparison
    folder, default ./compare) and write the comparison; returns what compare.json holds."""
    from starcli.evaluate import evaluate

    if len(checkpoints) < 2:
        raise UsageError("--compare needs at least two checkpoints (run folders or "
                         "checkpoint folders).")
    out = Path(cfg.out) if cfg.out is not None else Path("compare")
    runs = []
    for i, ckpt in enumerate(checkpoints):
        folder = out / _slug(Path(ckpt), i)
        log(progress, f"compare: {ckpt} → {folder}")
        report = evaluate(replace(cfg, checkpoint=Path(ckpt), out=folder), progress=progress)
        summary = report["summary"]
        targets = {f"{d['dataset']}:{t['target']}": t.get("success")
                   for d in report["datasets"] for t in d["targets"]}
        runs.append({"name": _slug(Path(ckpt), i), "checkpoint": report["checkpoint"],
                     "step": report["step"], "family": report.get("family"),
                     "report": str(folder / "report.json"),
                     "html": report.get("files", {}).get("html"),
                     "figures": {k: summary.get(k) for k, _, _ in FIGURES},
                     "targets": targets})
    every_target = list(dict.fromkeys(t for r in runs for t in r["targets"]))
    result = {"format": "starcli-compare", "version": 1, "split": cfg.split,
              "seed": cfg.seed, "metrics": list(cfg.metrics), "num_images": cfg.num_images,
              "runs": runs, "targets": every_target}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(result, indent=2))
    atomic_write_text(out / "compare.md", _markdown(result))
    atomic_write_text(out / "compare.html", _html(result, out))
    result["files"] = {"json": str(out / "compare.json"), "markdown": str(out / "compare.md"),
                       "html": str(out / "compare.html")}
    return result


def _rows(result: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    runs = result["runs"]
    figures = [[label] + [_cell(r["figures"].get(key), pct) for r in runs]
               for key, label, pct in FIGURES
               if any(r["figures"].get(key) is not None for r in runs)]
    targets = [[t] + [_cell(r["targets"].get(t), True) for r in runs]
               for t in result["targets"]]
    return figures, targets


def _markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    head = "| | " + " | ".join(f"{r['name']} (step {r['step']:,})" for r in runs) + " |"
    rule = "|---" * (len(runs) + 1) + "|"
    figures, targets = _rows(result)
    lines = ["# starcli eval --compare", "",
             f"Same {result['split']} faces, targets, metrics and seed ({result['seed']}) "
             "through each checkpoint.", ""]
    lines += [f"- **{r['name']}**: {r['checkpoint']} (report: {r['report']})" for r in runs]
    lines += ["", "## Headline figures", "", head, rule]
    lines += ["| " + " | ".join(row) + " |" for row in figures]
    lines += ["", "## Success per target", "", head, rule]
    lines += ["| " + " | ".join(row) + " |" for row in targets]
    return "\n".join(lines) + "\n"


def _html(result: dict[str, Any], out: Path) -> str:
    from starcli.html import Raw, _page, _table, href, text

    runs = result["runs"]
    header = [""] + [f"{r['name']} (step {r['step']:,})" for r in runs]
    figures, targets = _rows(result)
    links = []
    for r in runs:
        page = Path(r["html"]) if r.get("html") else None
        link = (f'<a href="{href(page.relative_to(out))}">{text(r["name"])}</a>'
                if page is not None and page.is_relative_to(out) else text(r["name"]))
        links.append(f"<li>{link}: {text(r['checkpoint'])}</li>")
    body = ["<h1>starcli eval --compare</h1>",
            f"<p>Same {text(result['split'])} faces, targets, metrics and seed "
            f"({text(result['seed'])}) through each checkpoint.</p>",
            Raw("<ul>" + "".join(links) + "</ul>"), "<h2>Headline figures</h2>",
            _table(header, figures), "<h2>Success per target</h2>", _table(header, targets)]
    return _page("starcli eval --compare", body)
