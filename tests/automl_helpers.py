"""What the AutoML search tests share (SQLite in automl/test_search.py, PostgreSQL in automl/test_postgres.py).

The stand-in trainer, the study a search writes, a search run as its own process, and the two scenarios that
need processes: two workers on one study, and a search killed mid-trial then resumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ddetr.automl.storage import effective_trials
from ddetr.spec.load import load_spec
from ddetr.status import read_status

AUTOML_TESTS = Path(__file__).parent / "automl"
FAKE = [sys.executable, str(AUTOML_TESTS / "fake_train.py")]
STUDY = "ddetr-automl"
LR_SEARCH = [
    "automl.hyperparameters=[train.optim.lr]",
    "automl.range_override={train.optim.lr: {min: 1e-8, max: 1e-2, log: true}}",
]
# a study loader: the search's results_dir -> its study
StudyOf = Callable[[Path], optuna.Study]


def sqlite_url(results: Path) -> str:
    """The default storage of a search whose results_dir is ``results`` (its automl folder is created)."""
    (results / "automl").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{results / 'automl' / 'study.db'}"


def sqlite_study(results: Path, name: str = STUDY) -> optuna.Study:
    """The study in the default SQLite storage of a search whose results_dir is ``results``."""
    return optuna.load_study(study_name=name, storage=sqlite_url(results))


def precreate_study(storage: str | BaseStorage, lrs: Iterable[float]) -> optuna.Study:
    """The search's study made before the search, with these learning rates queued as its first trials."""
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    for lr in lrs:
        study.enqueue_trial({"train.optim.lr": lr})
    return study


def started_count(trial_dir: Path) -> int:
    """How many times a trial's training started (STARTED events in its status.json)."""
    return sum(e["status"] == "STARTED" for e in read_status(trial_dir / "train" / "status.json"))


def spawn_search(spec_file: Path, *overrides: str, epoch_seconds: str) -> subprocess.Popen[bytes]:
    """A search with the stand-in trainer in its own process (run_fake_search.py); its log stays beside the spec."""
    env = {**os.environ, "FAKE_EPOCH_SECONDS": epoch_seconds}
    cmd = [sys.executable, str(AUTOML_TESTS / "run_fake_search.py"), str(spec_file), *overrides]
    log = spec_file.parent / f"search_{time.monotonic_ns()}.log"
    with log.open("wb") as fh:  # kept for a failing test's reader
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)


def two_workers_share_one_study(spec_file: Path, study_of: StudyOf, *storage: str) -> None:
    """Two search processes on one study run six trials: each once, both work, no suggestion is replayed."""
    overrides = ["automl.algorithm=random", "automl.max_recommendations=6", *storage]
    results = Path(load_spec(spec_file, overrides).results_dir)
    workers = [spawn_search(spec_file, *overrides, epoch_seconds="0.4") for _ in range(2)]
    assert [w.wait(180) for w in workers] == [0, 0]
    trials = study_of(results).get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(started_count(results / "automl" / f"trial_{t.number:03d}") == 1 for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    # the joining worker does not replay the first worker's suggestions
    assert len({t.params["train.optim.lr"] for t in trials}) == 6


def kill_during_second_trial(
    spec_file: Path, overrides: list[str], study_of: StudyOf
) -> tuple[Path, optuna.Study]:
    """SIGKILL a search once trial 1 has reported an epoch.

    Returns:
        Trial 1's status.json and the study as the kill left it (trial 0 complete, trial 1 running).
    """
    results = Path(load_spec(spec_file, overrides).results_dir)
    proc = spawn_search(spec_file, *overrides, epoch_seconds="1.0")
    status = results / "automl" / "trial_001" / "train" / "status.json"
    deadline = time.monotonic() + 90
    while not any("kpi" in e for e in read_status(status)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the search ended before it could be killed mid-trial"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = study_of(results)
    assert [t.state for t in killed.get_trials()][:2] == [TrialState.COMPLETE, TrialState.RUNNING]
    return status, killed


def resume_retries_the_dead_trial(spec_file: Path, overrides: list[str], study_of: StudyOf) -> optuna.Study:
    """Run the killed search again: trial 0 is kept, trial 1 fails and is retried with its parameters.

    Returns:
        The study after the resumed search.
    """
    results = Path(load_spec(spec_file, overrides).results_dir)
    resumed = spawn_search(spec_file, *overrides, epoch_seconds="0.05")
    assert resumed.wait(120) == 0
    study = study_of(results)
    trials = study.get_trials()
    assert trials[0].state == TrialState.COMPLETE and started_count(results / "automl" / "trial_000") == 1
    assert trials[1].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == trials[1].params
    assert sum(t.state == TrialState.COMPLETE for t in effective_trials(study)) == 3
    return study
