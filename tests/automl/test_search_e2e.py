"""Real searches on the CPU: a tiny Deformable DETR on the synthetic dataset, through ``ddetr automl`` (slow)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from automl_helpers import precreate_study, sqlite_study, sqlite_url, started_count
from browser import check_report
from ddetr.automl.storage import effective_trials
from ddetr.spec.load import load_spec
from ddetr.status import read_status

pytestmark = pytest.mark.slow

LR_ONLY = [
    "automl.hyperparameters=[train.optim.lr]",
    "automl.range_override={train.optim.lr: {min: 1e-9, max: 1e-2, log: true}}",
]


def _ddetr(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "ddetr", *args], stdout=fh, stderr=subprocess.STDOUT)


def test_hyperband_search_prunes_two_of_four_and_best_spec_trains(tiny_spec_file: Path) -> None:
    spec = load_spec(tiny_spec_file)
    results = Path(spec.results_dir)
    # Trial 0 (untrained) always goes on; trial 1 learns and beats it; trials 2 and 3 are untrained again
    # and fall behind trial 1 after one epoch, so hyperband prunes them.
    precreate_study(sqlite_url(results), [1e-9, 5e-4, 1e-9, 1e-9])
    log = tiny_spec_file.parent / "automl.log"
    proc = _ddetr("automl", "-e", str(tiny_spec_file), "automl.algorithm=hyperband", *LR_ONLY, log=log)
    assert proc.wait(1200) == 0, log.read_text()[-3000:]
    states = [t.state for t in sqlite_study(results).get_trials()]
    assert states.count(TrialState.PRUNED) == 2 and states.count(TrialState.COMPLETE) == 2, states
    assert states[1] == TrialState.COMPLETE
    automl_dir = results / "automl"
    rows = list(csv.DictReader((automl_dir / "leaderboard.csv").open()))
    assert len(rows) == 4 and rows[0]["state"] == "COMPLETE"
    best = json.loads((automl_dir / "best_trial.json").read_text())
    assert Path(best["checkpoint"]).is_file() and best["trial"] == 1  # equal mAPs: the lower val_loss
    assert (automl_dir / "metric_vs_trial.png").is_file() and (automl_dir / "param_importances.png").is_file()
    check_report(automl_dir / "report.html", ["automl", "run", "spec"], ["history", "importance"])
    assert (automl_dir / "trial_001" / "train" / "report.html").is_file()  # each complete trial's own report
    # the pruned trials were judged on the intermediate values read from their status.json; a trial this tiny
    # may finish its 2-epoch budget before the runner's next look, so the number of validations is not pinned
    for t in sqlite_study(results).get_trials(states=(TrialState.PRUNED,)):
        events = read_status(automl_dir / f"trial_{t.number:03d}" / "train" / "status.json")
        validations = [
            e["kpi"]["val_mAP"]
            for e in events
            if "val_mAP" in (e.get("kpi") or {}) and e["status"] == "RUNNING"
        ]
        assert t.intermediate_values and 1 <= len(validations) <= spec.automl.max_epochs
        assert min(t.intermediate_values) >= 0
    # best_spec.yaml loads and trains
    best_spec = load_spec(automl_dir / "best_spec.yaml")
    assert best_spec.train.optim.lr == pytest.approx(best["params"]["train.optim.lr"])
    train = _ddetr("train", "-e", str(automl_dir / "best_spec.yaml"), "train.num_epochs=1", log=log)
    assert train.wait(600) == 0, log.read_text()[-3000:]
    assert (results / "train" / "dd_model_latest.pth").exists()


def test_resume_after_killing_a_real_search(tiny_spec_file: Path) -> None:
    args = [
        "automl",
        "-e",
        str(tiny_spec_file),
        "automl.algorithm=random",
        "automl.max_recommendations=3",
        *LR_ONLY,
    ]
    results = Path(load_spec(tiny_spec_file).results_dir)
    log = tiny_spec_file.parent / "automl.log"
    proc = _ddetr(*args, log=log)
    status = results / "automl" / "trial_001" / "train" / "status.json"
    deadline = time.monotonic() + 900
    while not any(e["status"] == "STARTED" for e in read_status(status)) and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = sqlite_study(results).get_trials()
    assert [t.state for t in killed][:2] == [TrialState.COMPLETE, TrialState.RUNNING]
    again = _ddetr(*args, log=log)
    assert again.wait(1200) == 0, log.read_text()[-3000:]
    study = sqlite_study(results)
    trials = study.get_trials()
    assert started_count(results / "automl" / "trial_000") == 1  # finished trial kept, not re-run
    assert trials[1].state == TrialState.FAIL
    assert any(t.system_attrs.get("failed_trial") == 1 and t.state == TrialState.COMPLETE for t in trials)
    assert sum(t.state == TrialState.COMPLETE for t in effective_trials(study)) == 3


def test_two_real_workers_share_a_study(tiny_spec_file: Path) -> None:
    args = [
        "automl",
        "-e",
        str(tiny_spec_file),
        "automl.algorithm=random",
        "automl.max_recommendations=4",
        "automl.max_epochs=1",
        *LR_ONLY,
    ]
    results = Path(load_spec(tiny_spec_file).results_dir)
    logs = [tiny_spec_file.parent / f"worker{i}.log" for i in range(2)]
    workers = [_ddetr(*args, log=logs[i]) for i in range(2)]
    codes = [w.wait(1500) for w in workers]
    assert codes == [0, 0], [p.read_text()[-2000:] for p in logs]
    trials = sqlite_study(results).get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(started_count(results / "automl" / f"trial_{t.number:03d}") == 1 for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    assert os.path.isfile(results / "automl" / "leaderboard.csv")


def test_test_map_metric_evaluates_the_trial_checkpoint(tiny_spec_file: Path) -> None:
    """automl.metric=test_mAP through the real `ddetr train` and `ddetr evaluate` of a one-trial search."""
    spec = load_spec(tiny_spec_file)
    val = spec.dataset.val_data_sources[0]
    log = tiny_spec_file.parent / "automl.log"
    args = [
        "automl",
        "-e",
        str(tiny_spec_file),
        "automl.algorithm=random",
        "automl.max_recommendations=1",
        "automl.max_epochs=1",
        "automl.metric=test_mAP",
        f"dataset.test_data_sources.image_dir={val.image_dir}",
        f"dataset.test_data_sources.json_file={val.json_file}",
        *LR_ONLY,
    ]
    assert _ddetr(*args, log=log).wait(1200) == 0, log.read_text()[-3000:]
    (trial,) = sqlite_study(Path(spec.results_dir)).get_trials()
    assert trial.state == TrialState.COMPLETE
    trial_dir = Path(spec.results_dir) / "automl" / "trial_000"
    metrics = json.loads((trial_dir / "evaluate" / "metrics.json").read_text())
    assert trial.value == metrics["test_mAP"] and Path(metrics["model"]) == Path(
        trial.user_attrs["checkpoint"]
    )
    assert "val_mAP" in trial.user_attrs
