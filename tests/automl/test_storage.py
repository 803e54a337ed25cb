"""The study's storage: opening it, the queue of trials, and the atomic claim of a queued trial."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest

from ddetr.automl.storage import ensure_slots, open_storage, open_study, pop_waiting_trial
from ddetr.errors import SpecError


def _study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage, bool]:
    rdb = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study, created = open_study(
        rdb, "s", "maximize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    )
    return study, rdb, created


def test_slots_are_created_once_and_raised_later(tmp_path: Path) -> None:
    study, _rdb, created = _study(tmp_path)
    assert created and ensure_slots(study, 5, created) == 5
    again, _rdb, created = _study(tmp_path)
    assert not created and ensure_slots(again, 5, created) == 0
    assert ensure_slots(again, 7, created) == 2 and len(again.get_trials()) == 7


def test_each_queued_trial_is_taken_by_exactly_one_worker(tmp_path: Path) -> None:
    study, rdb, created = _study(tmp_path)
    ensure_slots(study, 24, created)
    taken: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def worker() -> None:
        barrier.wait()
        while (trial := pop_waiting_trial(study, rdb)) is not None:
            with lock:
                taken.append(trial.number)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(24))


def test_direction_mismatch_is_a_spec_error(tmp_path: Path) -> None:
    _study(tmp_path)
    rdb = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    with pytest.raises(SpecError, match=r"automl\.direction"):
        open_study(rdb, "s", "minimize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
