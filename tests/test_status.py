"""status.json: JSON Lines in TAO's format, and the tolerant reader."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from ddetr.status import StatusLogger, read_status


def test_each_event_is_one_json_line_with_the_required_keys(tmp_path):
    path = tmp_path / "a" / "status.json"
    log = StatusLogger(path)
    log.started("Starting training.", epoch=0, max_epoch=3)
    log.running(
        "epoch done",
        epoch=0,
        max_epoch=3,
        step=10,
        max_step=30,
        time_per_epoch=83.5,
        eta=167.0,
        kpi={"train_loss": 1.25},
    )
    log.success("done", kpi={"val_mAP": 0.41, "val_mAP50": 0.6, "val_loss": 2.0})
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    events = [json.loads(ln) for ln in lines]
    for event in events:
        assert set(event) >= {"date", "time", "status", "verbosity", "message"}
        assert re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", event["date"])
        assert re.fullmatch(r"\d\d:\d\d:\d\d", event["time"])
    assert [e["status"] for e in events] == ["STARTED", "RUNNING", "SUCCESS"]
    running = events[1]
    assert (running["epoch"], running["max_epoch"], running["step"], running["max_step"]) == (0, 3, 10, 30)
    assert running["time_per_epoch"] == str(dt.timedelta(seconds=83.5)) and running["eta"] == "0:02:47"
    assert running["kpi"] == {"train_loss": 1.25}
    assert isinstance(events[2]["kpi"]["val_mAP"], float)  # numbers, not strings
    assert "epoch" not in events[2]


def test_failure_defaults_to_error_verbosity_and_appends(tmp_path):
    path = tmp_path / "status.json"
    StatusLogger(path).started("one")
    StatusLogger(path).failure("boom")
    events = read_status(path)
    assert [e["status"] for e in events] == ["STARTED", "FAILURE"]
    assert events[1]["verbosity"] == "ERROR"


def test_unknown_status_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="DONE"):
        StatusLogger(tmp_path / "s.json").write("DONE", "x")  # type: ignore[arg-type]


def test_non_finite_and_numpy_like_values_become_plain_json(tmp_path):
    class Scalar:
        def item(self):
            return 0.5

    path = tmp_path / "s.json"
    StatusLogger(path).running(
        "x", max_step=float("inf"), kpi={"val_mAP": Scalar(), "val_loss": float("nan")}
    )
    event = json.loads(path.read_text())
    assert "max_step" not in event or event["max_step"] is None
    assert event["kpi"] == {"val_mAP": 0.5, "val_loss": None}


def test_reader_accepts_tao_string_kpis_and_skips_a_truncated_line(tmp_path):
    path = tmp_path / "status.json"
    path.write_text(
        '{"date": "6/20/2023", "time": "10:00:00", "status": "RUNNING", "verbosity": "INFO", "message": "",'
        ' "kpi": {"val_mAP": "0.41", "val_mAP50": 0.6, "note": "n/a"}}\n'
        "\n"
        '{"date": "6/20/2023", "time": "10:00:01", "status": "SUCC'
    )
    events = read_status(path)
    assert len(events) == 1
    assert events[0]["kpi"] == {"val_mAP": 0.41, "val_mAP50": 0.6, "note": "n/a"}


def test_reader_of_a_missing_file_is_empty(tmp_path):
    assert read_status(tmp_path / "none.json") == []


def test_action_frames_work_with_started_and_failure(tmp_path) -> None:
    import pytest

    from ddetr.status import StatusLogger, read_status

    log = StatusLogger(tmp_path / "status.json")
    with log.action("Exporting model.pth."):
        log.success("Exported.")
    with pytest.raises(ValueError, match="bad opset"), log.action("Exporting again."):
        raise ValueError("bad opset")
    events = read_status(tmp_path / "status.json")
    assert [e["status"] for e in events] == ["STARTED", "SUCCESS", "STARTED", "FAILURE"]
    assert events[0]["message"] == "Exporting model.pth."
    assert events[-1]["message"] == "ValueError: bad opset" and events[-1]["verbosity"] == "ERROR"
