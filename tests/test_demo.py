"""demo.py end to end: ``python -m ddetr.demo`` really learns the synthetic shapes (several CPU minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddetr import demo

MIN_MAP50 = 0.6


@pytest.mark.slow
def test_demo_learns_the_synthetic_shapes(tmp_path: Path) -> None:
    assert demo.main(["--results-dir", str(tmp_path)]) == 0

    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert metrics["test_mAP50"] >= MIN_MAP50, metrics

    # the final epoch was validated: training's status.json reports val_mAP50 too
    lines = (tmp_path / "train" / "status.json").read_text().splitlines()
    val_map50 = [e["kpi"]["val_mAP50"] for e in map(json.loads, lines) if "val_mAP50" in e.get("kpi", {})]
    assert val_map50 and val_map50[-1] >= MIN_MAP50, val_map50

    pictures = list((tmp_path / "inference").rglob("*.jpg"))
    assert pictures, "inference wrote no annotated pictures"
