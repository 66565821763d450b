"""Number formatting shared by the eval report and the CLI's summary (no heavy imports)."""

from __future__ import annotations

from typing import Any

__all__ = ["pct", "num", "classification_error_sentence"]


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def classification_error_sentence(err: dict[str, Any]) -> str:
    """"classification error of translated images X (real images Y)", plus the StarGAN
    paper's RaFD numbers when the report carries them."""
    line = (f"classification error of translated images {pct(err['translated'], 2)} "
            f"(real images {pct(err['real'], 2)})")
    if err.get("paper"):
        line += (f"; StarGAN paper on RaFD: {pct(err['paper']['stargan'], 2)} "
                 f"(real {pct(err['paper']['real'], 2)})")
    return line
