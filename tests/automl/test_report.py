"""Search results written from the study: leaderboard order, best trial, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from ddetr.automl.report import leaderboard_rows, write_leaderboard, write_plots

DIST = {"train.optim.lr": FloatDistribution(1e-6, 1e-2, log=True)}


def _study(direction: str) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for i, (state, value) in enumerate(
        [
            (TrialState.COMPLETE, 0.2),
            (TrialState.PRUNED, None),
            (TrialState.COMPLETE, 0.5),
            (TrialState.FAIL, None),
        ]
    ):
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"train.optim.lr": 10 ** -(i + 2)},
                distributions=DIST,
                intermediate_values={1: 0.1} if state == TrialState.PRUNED else {},
                user_attrs={"error": "boom"} if state == TrialState.FAIL else {},
            )
        )
    return study


def test_leaderboard_order_follows_direction(tmp_path: Path) -> None:
    rows = leaderboard_rows(_study("maximize"), "val_mAP")
    assert [r["trial"] for r in rows] == [2, 0, 1, 3]
    assert rows[2]["val_mAP"] == 0.1 and rows[3]["note"] == "boom"
    assert [r["trial"] for r in leaderboard_rows(_study("minimize"), "val_mAP")][:2] == [0, 2]
    path = write_leaderboard(_study("maximize"), "val_mAP", tmp_path / "leaderboard.csv")
    table = list(csv.DictReader(path.open()))
    assert table[0]["trial"] == "2" and table[0]["train.optim.lr"] == str(1e-4)


def test_plots_are_written(tmp_path: Path) -> None:
    paths = write_plots(_study("maximize"), "val_mAP", tmp_path)
    assert [p.name for p in paths] == ["metric_vs_trial.png", "param_importances.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    importances = json.loads((tmp_path / "param_importances.json").read_text())  # for report.html
    assert isinstance(importances, dict) and all(isinstance(v, float) for v in importances.values())
    # no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in paths] + ["param_importances.json"]
    )


def test_equal_metrics_best_is_lower_val_loss() -> None:
    from ddetr.automl.report import best_trial

    study = optuna.create_study(direction="maximize")
    for loss in (5.7, 5.6, 5.9):
        study.add_trial(
            create_trial(
                value=0.0, params={"train.optim.lr": 1e-3}, distributions=DIST, user_attrs={"val_loss": loss}
            )
        )
    best = best_trial(study)
    assert best is not None and best.number == 1
    assert [r["trial"] for r in leaderboard_rows(study, "val_mAP")] == [1, 0, 2]
