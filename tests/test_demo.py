"""demo.py end to end: ``python -m ddetr.demo`` trains, then reports validation and test figures apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ddetr import demo

# the demo's recipe on its test split gave mAP 0.765 / mAP50 0.912 with 2 threads (three runs, the same figures); runs
# of nearby recipes varied by +-0.05 mAP and +-0.04 mAP50: the slow test holds the floor of mAP 0.5 and
# mAP50 a little below 0.9, so a regression fails it.
MIN_TEST_MAP, MIN_TEST_MAP50 = 0.5, 0.88

_FIGURES = re.compile(r"^\s*(validation|test) \((\d+) images\)\s+mAP50: ([0-9.]+)\s+mAP: ([0-9.]+)$", re.M)


def _check_output(out: str, root: Path) -> dict[str, tuple[float, float]]:
    """The printed validation and test figures, checked against the files the run wrote."""
    figures = {m[1]: (int(m[2]), float(m[3]), float(m[4])) for m in _FIGURES.finditer(out)}
    assert set(figures) == {"validation", "test"}, out
    assert re.search(r"Demo finished in [0-9.]+ min \(\d+ s wall time", out), out

    # the test split is separate: its own images, none of them a training or validation image
    data = root / "data"
    test_json = json.loads((data / "annotations" / "test.json").read_text())
    assert figures["test"][0] == len(test_json["images"]) == demo.NUM_TEST
    assert figures["validation"][0] == demo.NUM_VAL
    seen = {p.read_bytes() for split in ("train", "val") for p in (data / "images" / split).glob("*.jpg")}
    assert not seen & {p.read_bytes() for p in (data / "images" / "test").glob("*.jpg")}

    # evaluate scored the test split, and the printed test figures are its figures
    metrics = json.loads((root / "evaluate" / "metrics.json").read_text())
    assert figures["test"][1:] == (round(metrics["test_mAP50"], 3), round(metrics["test_mAP"], 3))
    spec = (root / "evaluate" / "experiment.yaml").read_text()
    assert "annotations/test.json" in spec
    # the validation figures are those of training's last validation
    lines = (root / "train" / "status.json").read_text().splitlines()
    kpis = [e["kpi"] for e in map(json.loads, lines) if "val_mAP50" in e.get("kpi", {})]
    assert figures["validation"][1:] == (round(kpis[-1]["val_mAP50"], 3), round(kpis[-1]["val_mAP"], 3))

    report = root / "train" / "report.html"
    assert (f"report:     {report}" in out) == report.is_file()
    return {k: v[1:] for k, v in figures.items()}


def test_demo_reports_val_and_test_apart(tmp_path: Path, monkeypatch, capsys) -> None:
    # the demo's path with a tiny dataset and model: fast, and not a measure of the recipe
    monkeypatch.setattr(demo, "NUM_TRAIN", 8)
    monkeypatch.setattr(demo, "NUM_VAL", 4)
    monkeypatch.setattr(demo, "NUM_TEST", 5)
    tiny = [
        "model.hidden_dim=32",
        "model.dim_feedforward=64",
        "model.num_feature_levels=1",
        "model.return_interm_indices=[3]",
        "train.num_epochs=1",
        "train.validation_interval=1",
        "train.checkpoint_interval=1",
        "train.optim.lr_steps=[1]",
    ]
    # the folder given as a spec override: the data is generated there too
    assert demo.main([f"results_dir={tmp_path}", *tiny]) == 0
    _check_output(capsys.readouterr().out, tmp_path)
    assert list((tmp_path / "inference").rglob("*.jpg")), "inference wrote no annotated pictures"


@pytest.mark.slow
def test_demo_learns_the_synthetic_shapes(demo_run: tuple[Path, str]) -> None:
    root, printed = demo_run
    figures = _check_output(printed, root)
    test_map50, test_map = figures["test"]
    assert test_map50 >= MIN_TEST_MAP50 and test_map >= MIN_TEST_MAP, figures


def test_demo_interrupted_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import ddetr
    from ddetr.errors import Interrupted

    def stopped(spec):
        raise Interrupted("training interrupted by SIGTERM at step 3", 143)

    monkeypatch.setattr(demo, "NUM_TRAIN", 2)
    monkeypatch.setattr(demo, "NUM_VAL", 1)
    monkeypatch.setattr(demo, "NUM_TEST", 1)
    monkeypatch.setattr(ddetr, "train", stopped)
    assert demo.main(["--results-dir", str(tmp_path)]) == 143
    errors = [line for line in capsys.readouterr().err.splitlines() if "INFO" not in line]
    assert errors == ["error: training interrupted by SIGTERM at step 3"]  # no traceback


def test_bad_override_is_one_line_before_any_data(tmp_path: Path, capsys) -> None:
    assert demo.main(["--results-dir", str(tmp_path / "out"), "train.num_epochs=many"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "INFO" not in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "num_epochs" in errors[0], errors
    assert not (tmp_path / "out").exists()  # the spec is checked before the dataset is generated
