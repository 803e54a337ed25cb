"""bench/_rows.py: the one table of ``make bench`` (rows recorded by the scripts, printed by run_all.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH_ROWS = Path(__file__).resolve().parents[1] / "bench" / "_rows.py"


@pytest.fixture()
def rows_module():
    spec = importlib.util.spec_from_file_location("bench_rows", BENCH_ROWS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_are_recorded_read_back_and_judged(rows_module, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "rows.jsonl"
    monkeypatch.setenv(rows_module.ENV, str(path))
    rows_module.record("train step (s)", 6.0, 10.0, "HF fp32", 0.7)
    rows_module.record("inference (s)", 4.0, 10.0, "HF fp32", 0.35)
    rows_module.record("bf16 row", None, None, "HF fp32", 0.15, note="not measured: no AMX")
    rows = rows_module.read(path)
    assert [row["ratio"] for row in rows] == [pytest.approx(0.6), pytest.approx(0.4), None]
    assert [row["ok"] for row in rows] == [True, False, False]
    lines = rows_module.table(rows)
    assert lines[2].endswith("pass") and "0.60" in lines[2]
    assert lines[3].endswith("FAIL") and "<=0.35" in lines[3]
    assert "FAIL  (not measured: no AMX)" in lines[4]
    assert lines[-1] == "1 of 3 targets met"


def test_without_the_variable_nothing_is_written(rows_module, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(rows_module.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    row = rows_module.record("x", 1.0, 2.0, "peer", 1.0)
    assert row["ok"] and not list(tmp_path.iterdir())
    assert rows_module.read(tmp_path / "missing.jsonl") == []
