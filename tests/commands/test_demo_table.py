"""The demo's closing table: every figure of issue 14 and whether each bar is met."""

from __future__ import annotations

from starcli.commands import demo as demo_cmd
from starcli.commands._common import console


def _row(target, success, retention, l1, frame, cycle):
    return {"target": target, "success": success, "retention": retention,
            "identity_l1": l1, "identity_l1_frame": frame, "cycle_l1": cycle}


def test_closing_table_shows_what_must_not_change_and_marks_the_bars():
    rows = [_row("Blond_Hair", 0.95, 0.97, 0.10, 0.05, 0.08),
            _row("Male=1", 0.85, 0.91, 0.20, 0.30, 0.09)]
    summary = {**_row("all", 0.90, 0.94, 0.15, 0.175, 0.085), "targets": 2,
               "figures": {"success": 0.90, "retention": 0.94, "identity_l1": 0.15,
                           "identity_l1_frame_no_male": 0.05, "identity_l1_frame_male": 0.30,
                           "transfer": 0.42}}
    result = {"datasets": [{"dataset": "demo-celeba", "targets": rows,
                            "mean": _row("mean", 0.90, 0.94, 0.15, 0.175, 0.085)}],
              "summary": summary, "full_budget": True, "translate": {
                  "targets": [], "grids": "out/_grid", "out": "out"},
              "seconds": 1.0, "train": {"seconds": 1.0, "step": 2, "device": "cpu",
                                         "precision": "fp32"},
              "report": {"markdown": "r.md"}}
    with console.capture() as cap:
        demo_cmd._print_result(result)
    text = cap.get()
    for cell in ("retention", "L1 frame", "cycle L1", "97.0%", "0.300"):
        assert cell in text, cell
    assert "✓ success 90.0%" in text and "✗ retention 94.0%" in text
    assert "✓ identity L1 (whole) 0.150" in text
    assert "✓ identity L1 (frame, Male flips apart) 0.050" in text
    assert "transfer 42.0%" in text
