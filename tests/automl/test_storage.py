"""The study's storage: opening it, the queue of trials, and the atomic claim of a queued trial."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from ddetr.automl import storage as st
from ddetr.automl.storage import ensure_slots, open_storage, open_study, pop_waiting_trial, with_driver
from ddetr.errors import SpecError


def _study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage, bool]:
    rdb = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study, created = open_study(
        rdb, "s", "maximize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    )
    return study, rdb, created


def test_slots_are_created_once_and_raised_later(tmp_path: Path) -> None:
    study, rdb, created = _study(tmp_path)
    assert created and ensure_slots(study, rdb, 5) == 5
    again, rdb, created = _study(tmp_path)
    assert not created and ensure_slots(again, rdb, 5) == 0
    assert ensure_slots(again, rdb, 7) == 2 and len(again.get_trials()) == 7


def test_a_joiner_waits_for_the_process_queueing_the_trials(tmp_path: Path) -> None:
    creator, rdb, _ = _study(tmp_path)
    assert st._take_slots_lock(rdb, creator._study_id, 8)  # the creator, half-way through queueing
    for _ in range(3):
        creator.enqueue_trial({})

    def finish() -> None:
        time.sleep(1.0)
        for _ in range(5):
            creator.enqueue_trial({})
        creator.set_user_attr(st.SLOTS_ATTR, 8)

    thread = threading.Thread(target=finish)
    thread.start()
    joiner, rdb2, created = _study(tmp_path)
    assert not created and ensure_slots(joiner, rdb2, 8) == 0
    thread.join()
    assert len(joiner.get_trials()) == 8


def test_a_dead_queueing_process_is_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study, rdb, _ = _study(tmp_path)
    assert st._take_slots_lock(rdb, study._study_id, 6) and not st._take_slots_lock(rdb, study._study_id, 6)
    study.enqueue_trial({})  # then the process that held the lock died
    monkeypatch.setattr(st, "SLOT_STALL", 0.5)
    again, rdb, _ = _study(tmp_path)
    assert ensure_slots(again, rdb, 6) == 5 and len(again.get_trials()) == 6
    assert ensure_slots(again, rdb, 6) == 0


def test_each_queued_trial_is_taken_by_exactly_one_worker(tmp_path: Path) -> None:
    study, rdb, _created = _study(tmp_path)
    ensure_slots(study, rdb, 24)
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


def test_bare_postgresql_url_gets_the_installed_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLAlchemy's own default (psycopg 3 since 2.1) need not be installed; the postgres extra is psycopg2
    assert (
        with_driver("postgresql://me:p%40ss@db.example:5432/s")
        == "postgresql+psycopg2://me:p%40ss@db.example:5432/s"
    )
    assert with_driver("postgresql+psycopg://me@h/s") == "postgresql+psycopg://me@h/s"
    assert with_driver("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # neither driver importable
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(SpecError, match=r"automl\.storage: .*no PostgreSQL driver") as info:
        open_storage("postgresql://me:s3cret@127.0.0.1:9/s")
    assert (
        "\n" not in str(info.value)
        and "s3cret" not in str(info.value)
        and "psycopg2-binary" in str(info.value)
    )
