"""The search loop with a stand-in trainer (fast): pruning, results, resume, shared storage, grid, bad input."""

from __future__ import annotations

import csv
import itertools
import json
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from automl_helpers import (
    FAKE,
    LR_SEARCH,
    kill_during_second_trial,
    precreate_study,
    resume_retries_the_dead_trial,
    sqlite_study,
    sqlite_url,
    started_count,
    two_workers_share_one_study,
)
from ddetr.automl.search import run_search
from ddetr.cli import main as cli_main
from ddetr.errors import SpecError
from ddetr.spec.load import load_spec
from ddetr.status import read_status
from ddetr.tasks.automl import maybe_route, wants_search


def test_hyperband_prunes_and_writes_results(tiny_spec_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.6")  # slow enough to be pruned before the second epoch
    spec = load_spec(tiny_spec_file, ["automl.algorithm=hyperband", *LR_SEARCH])
    results = Path(spec.results_dir)
    # first trial always goes on; the second is better (goes on); the last two are worse at epoch 1 (pruned)
    precreate_study(sqlite_url(results), [1e-7, 3e-4, 1e-6, 1e-5])
    out = run_search(spec, results / "automl", train_command=FAKE, poll_interval=0.05)
    study = sqlite_study(results)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert (out["complete"], out["pruned"], out["best_trial"]) == (2, 2, 1)
    rows = list(csv.DictReader((results / "automl" / "leaderboard.csv").open()))
    assert [r["trial"] for r in rows][:2] == ["1", "0"] and len(rows) == 4
    assert {"trial", "state", "val_mAP", "duration_s", "train.optim.lr"} <= set(rows[0])
    for row in rows[2:]:  # pruned after epoch 0: that epoch's metric, not the pruner's tie-broken value
        events = read_status(results / "automl" / f"trial_{int(row['trial']):03d}" / "train" / "status.json")
        assert float(row["val_mAP"]) == pytest.approx(
            next(e for e in events if e.get("epoch") == 0 and "kpi" in e)["kpi"]["val_mAP"]
        )
    best = json.loads((results / "automl" / "best_trial.json").read_text())
    assert Path(best["checkpoint"]).is_file() and "trial_001" in best["checkpoint"]
    best_spec = load_spec(results / "automl" / "best_spec.yaml")
    assert best_spec.train.optim.lr == pytest.approx(3e-4)
    assert best_spec.results_dir == spec.results_dir and best_spec.automl_policy == "off"
    for png in ("metric_vs_trial.png", "param_importances.png"):
        assert (results / "automl" / png).stat().st_size > 1000
    events = read_status(results / "automl" / "status.json")
    assert [e["status"] for e in events] == ["STARTED"] + ["RUNNING"] * 4 + ["SUCCESS"]
    assert events[-1]["kpi"]["best_val_mAP"] == pytest.approx(study.trials[1].value)
    assert events[3]["kpi"]["val_mAP"] == float(rows[2]["val_mAP"]) or events[3]["kpi"]["val_mAP"] == float(
        rows[3]["val_mAP"]
    )  # pruned trials report their metric, not the pruner's tie-broken value
    # a trial is a train run in its own folder with its own spec
    trial_spec = load_spec(results / "automl" / "trial_002" / "spec.yaml")
    assert trial_spec.results_dir == str(results / "automl" / "trial_002")
    assert trial_spec.train.num_epochs == 2 and trial_spec.automl_policy == "off"


def test_random_search_runs_to_count_and_reruns_nothing(tiny_spec_file: Path) -> None:
    spec = load_spec(tiny_spec_file, ["automl.algorithm=random", "automl.max_recommendations=3"])
    results = Path(spec.results_dir)
    run_search(spec, results / "automl", train_command=FAKE, poll_interval=0.05)
    again = run_search(spec, results / "automl", train_command=FAKE, poll_interval=0.05)
    assert again["complete"] == 3 and len(sqlite_study(results).get_trials()) == 3
    assert all(started_count(results / "automl" / f"trial_{i:03d}") == 1 for i in range(3))


def test_encryption_key_reaches_trials_by_environment_only(tiny_spec_file: Path) -> None:
    secret = "automl-s3cret"
    spec = load_spec(
        tiny_spec_file,
        ["automl.algorithm=random", "automl.max_recommendations=2", f"encryption_key={secret}"],
    )
    results = Path(spec.results_dir)
    run_search(spec, results / "automl", train_command=FAKE, poll_interval=0.05)
    for i in range(2):
        started = read_status(results / "automl" / f"trial_{i:03d}" / "train" / "status.json")[0]
        assert started["got_key"] is True
    written = [p for p in (results / "automl").rglob("*") if p.is_file()]
    assert any(p.name == "best_spec.yaml" for p in written)
    assert not [p for p in written if secret.encode() in p.read_bytes()]


def test_resume_after_kill(tiny_spec_file: Path) -> None:
    overrides = ["automl.algorithm=random", "automl.max_recommendations=3", "automl.max_epochs=3"]
    status, _ = kill_during_second_trial(tiny_spec_file, overrides, sqlite_study)
    size = status.stat().st_size
    time.sleep(2.5)
    assert status.stat().st_size == size, "the killed search's training went on"
    resume_retries_the_dead_trial(tiny_spec_file, overrides, sqlite_study)


def test_two_workers_share_one_study(tiny_spec_file: Path) -> None:
    two_workers_share_one_study(tiny_spec_file, sqlite_study)


def test_grid_skips_points_that_break_a_rule(tiny_spec_file: Path) -> None:
    spec = load_spec(
        tiny_spec_file,
        [
            "automl.algorithm=grid",
            "automl.range_override={train.optim.lr: [1e-4, 3e-4], model.num_select: [10, 30]}",
        ],
    )
    out = run_search(spec, Path(spec.results_dir) / "automl", train_command=FAKE, poll_interval=0.05)
    trials = sqlite_study(Path(spec.results_dir)).get_trials()
    assert out["complete"] == 2 and len(trials) == 2  # num_select=30 > num_queries=20 is never started
    assert {t.params["model.num_select"] for t in trials} == {10}
    assert {t.params["train.optim.lr"] for t in trials} == {1e-4, 3e-4}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sqlite:////nonexistent_dir_ddetr/sub/study.db", "unable to open database file"),
        # nothing listens there (a real server refusing the login: test_postgres.py, slow)
        ("postgresql://me:s3cret@127.0.0.1:9/db", "Connection refused"),
        ("nosuch://x", "nosuch"),
    ],
)
def test_unreachable_storage_is_one_line_error(tiny_spec_file: Path, url: str, reason: str) -> None:
    spec = load_spec(tiny_spec_file, [f"automl.storage={url}"])
    with pytest.raises(SpecError, match=r"automl\.storage") as info:
        run_search(spec, Path(spec.results_dir) / "automl", train_command=FAKE)
    assert "\n" not in str(info.value) and "s3cret" not in str(info.value) and reason in str(info.value)
    assert not list((Path(spec.results_dir) / "automl").glob("trial_*"))


def test_cli_rejects_bad_hyperparameter_before_any_trial(
    tiny_spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["automl", "-e", str(tiny_spec_file), "automl.hyperparameters=[model.hidden_dim]"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: the loader's warnings
    assert code == 2 and err.startswith("error: automl.hyperparameters")
    assert "must stay a multiple of 32" in err  # the field's never_searched reason
    spec = load_spec(tiny_spec_file)
    assert not (Path(spec.results_dir) / "automl").exists()  # checked before the results folder is made


@pytest.mark.parametrize(
    ("overrides", "routed"),
    [
        ([], False),
        (["automl_policy=off"], False),
        (["automl.enabled=false"], False),
        (["automl_policy=on"], True),
        (["automl.enabled=true"], True),
    ],
)
def test_policy_switch(
    tiny_spec_file: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], routed: bool
) -> None:
    spec = load_spec(tiny_spec_file, overrides)
    calls = []
    monkeypatch.setattr("ddetr.tasks.automl.run", lambda s: calls.append(s) or {"best_trial": 0})
    result = maybe_route(spec)
    assert wants_search(spec) is routed
    assert (result is not None) is routed and len(calls) == int(routed)


def test_concurrent_trials_in_one_process(tiny_spec_file: Path) -> None:
    spec = load_spec(
        tiny_spec_file,
        ["automl.algorithm=bayesian", "automl.max_recommendations=5", "automl.max_concurrent=2"],
    )
    out = run_search(spec, Path(spec.results_dir) / "automl", train_command=FAKE, poll_interval=0.05)
    trials = sqlite_study(Path(spec.results_dir)).get_trials()
    assert out["complete"] == 5 and len(trials) == 5
    automl_dir = Path(spec.results_dir) / "automl"
    assert all(started_count(automl_dir / f"trial_{t.number:03d}") == 1 for t in trials)
    starts = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(starts)), "no two trials overlapped"
