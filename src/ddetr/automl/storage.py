"""Where the study lives: an Optuna RDB storage (SQLite file by default, any SQLAlchemy URL), shared by workers.

The study's trials are created up front as WAITING "slots" (``max_recommendations`` of them); every worker,
on this machine or another, takes WAITING trials one at a time, so no trial is run twice and the study stops
at its trial count. A worker that dies leaves a RUNNING trial whose heartbeat goes stale; the next worker
to look marks it FAIL and Optuna's retry callback puts a copy of it back in the queue.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ddetr.errors import SpecError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STUDY_NAME",
    "effective_trials",
    "ensure_slots",
    "open_storage",
    "open_study",
    "pop_waiting_trial",
    "storage_url",
    "with_driver",
]

DEFAULT_STUDY_NAME = "ddetr-automl"
HEARTBEAT_INTERVAL = 5  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # seconds without a heartbeat after which a RUNNING trial is taken as dead
SCHEMA_ATTEMPTS = 5
MAX_RETRY = 3  # times a trial whose worker died is put back in the queue
SLOTS_ATTR = "max_recommendations"
SLOT_POLL = 0.25  # seconds between looks at a study whose trials another process is adding
SLOT_STALL = 10.0  # seconds that process may go without adding one before it is taken as dead


def storage_url(storage: str, automl_dir: Path) -> str:
    """``automl.storage``, or an SQLite file in the search's folder when it is empty."""
    if storage.strip():
        return storage.strip()
    return f"sqlite:///{(automl_dir / 'study.db').resolve()}"


def _hidden(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


# drivers for a bare postgresql:// URL, in order: psycopg2 is ddetr's `postgres` extra
POSTGRES_DRIVERS = ("psycopg2", "psycopg")


def with_driver(url: str) -> str:
    """A bare ``postgresql://`` URL with the PostgreSQL driver that is installed (psycopg2 first).

    SQLAlchemy maps a bare ``postgresql://`` to its own default driver (psycopg2 before 2.1, psycopg 3 since),
    which need not be the one installed. Other URLs, and URLs naming a driver, are returned unchanged.

    Raises:
        SpecError: no PostgreSQL driver is installed.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    if parsed.drivername != "postgresql":
        return url
    for module in POSTGRES_DRIVERS:
        if importlib.util.find_spec(module) is not None:
            return parsed.set(drivername=f"postgresql+{module}").render_as_string(hide_password=False)
    raise SpecError(
        f"automl.storage: cannot open {_hidden(url)!r}: no PostgreSQL driver is installed; "
        "pip install psycopg2-binary (ddetr's postgres extra)"
    )


def open_storage(
    url: str, *, heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD
) -> RDBStorage:
    """Open (and create the tables of) an Optuna RDB storage, with heartbeats and retry of dead trials.

    Raises:
        SpecError: the URL is malformed, its driver is missing, or the database cannot be reached.
            A bare ``postgresql://`` URL uses the installed driver (:func:`with_driver`).
    """
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    target = with_driver(url)
    engine_kwargs: dict[str, Any] = {}
    if target.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # several processes write the same file
    elif target.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    target,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
        except DBAPIError as exc:
            # Two workers creating the tables of a new database at once: the loser retries and finds them.
            if not _schema_race(exc) or attempt == SCHEMA_ATTEMPTS - 1:
                raise _unreachable(url, exc) from None
            time.sleep(0.5 * (attempt + 1))
        except (SQLAlchemyError, ImportError, ValueError, OSError) as exc:
            raise _unreachable(url, exc) from None
    raise RuntimeError("open_storage: no attempt made")


# PostgreSQL SQLSTATEs of a lost race to create the same table, type or row (unique_violation,
# duplicate_table, duplicate_object: the enum types, duplicate_schema) or of a transient conflict with it
# (deadlock_detected, serialization_failure)
RACE_SQLSTATES = {"23505", "42P07", "42710", "42P06", "40P01", "40001"}


def _schema_race(exc: BaseException) -> bool:
    """Whether a database error comes from another process creating the same tables at the same moment."""
    from sqlalchemy.exc import DBAPIError, IntegrityError

    if isinstance(exc, IntegrityError):
        return True
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)  # psycopg2, psycopg 3
    if code in RACE_SQLSTATES:
        return True
    return any(w in str(exc) for w in ("locked", "already exists"))  # SQLite says so in words


def _unreachable(url: str, exc: BaseException) -> SpecError:
    reason = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
    return SpecError(
        f"automl.storage: cannot open {_hidden(url)!r} ({reason}); give a reachable SQLAlchemy URL, "
        "e.g. sqlite:////path/study.db or postgresql://user@host/db, or leave it empty"
    )


def open_study(
    storage: RDBStorage,
    name: str,
    direction: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when another run already did.

    Returns:
        The study and whether this call created it.

    Raises:
        SpecError: a study of that name exists with another direction.
    """
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, sampler=sampler, pruner=pruner
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if study.direction.name.lower() != direction:
        raise SpecError(
            f"automl.direction: the study {name!r} in the storage was created with direction "
            f"{study.direction.name.lower()}, not {direction}; use another automl.study_name"
        )
    return study, False


def retried_numbers(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of failed trials that were put back in the queue as a new trial."""
    return {int(t.system_attrs["failed_trial"]) for t in trials if "failed_trial" in t.system_attrs}


def effective_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, less the failed ones a retry replaced (each slot counted once)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials if not (t.state == TrialState.FAIL and t.number in retried)]


def ensure_slots(
    study: optuna.Study,
    rdb: RDBStorage,
    count: int,
    fixed: Sequence[dict[str, Any]] | None = None,
) -> int:
    """Make the study hold ``count`` trials (existing ones count), adding WAITING ones as needed.

    Exactly one of the processes that open the study at once adds the trials (it wins a lock row in the
    storage); the others wait for it to finish, so the study never gets more than ``count`` trials.

    Args:
        study: The study.
        rdb: The study's storage.
        count: ``automl.max_recommendations``.
        fixed: Parameter sets of the new trials in order (grid points); empty mappings otherwise.

    Returns:
        The number of trials this call added.
    """
    if _recorded_slots(study) >= count:
        return 0
    if not _take_slots_lock(rdb, study._study_id, count):
        if _wait_for_slots(study, count):
            return 0
        logger.warning("the process queueing the study's trials stopped; this one queues the rest")
    have = len(effective_trials(study))
    wanted = count - have
    if fixed is not None:
        wanted = min(wanted, len(fixed) - have)  # grid points not in the study yet
    for i in range(max(0, wanted)):
        study.enqueue_trial(dict(fixed[have + i]) if fixed is not None else {})
    for _ in range(2):  # a concurrent first write of the attribute by another count may win
        study.set_user_attr(SLOTS_ATTR, max(count, _recorded_slots(study)))
        if _recorded_slots(study) >= count:
            break
    return max(0, wanted)


def _recorded_slots(study: optuna.Study) -> int:
    recorded = study.user_attrs.get(SLOTS_ATTR)
    return int(recorded) if recorded is not None else -1


def _take_slots_lock(rdb: RDBStorage, study_id: int, count: int) -> bool:
    """Insert the study attribute ``ddetr_slots_lock_<count>``: its unique key lets exactly one process win."""
    from optuna.storages._rdb import models
    from sqlalchemy.exc import IntegrityError

    session = rdb.scoped_session()
    try:
        session.add(
            models.StudySystemAttributeModel(
                study_id=study_id, key=f"ddetr_slots_lock_{count}", value_json=json.dumps(os.getpid())
            )
        )
        session.commit()
        return True
    except IntegrityError:
        session.rollback()
        return False
    finally:
        session.close()


def _wait_for_slots(study: optuna.Study, count: int) -> bool:
    """Wait while another process adds the trials; False when it stalls for ``SLOT_STALL`` seconds (died)."""
    seen, changed = -1, time.monotonic()
    while time.monotonic() - changed < SLOT_STALL:
        if _recorded_slots(study) >= count:
            return True
        have = len(study.get_trials(deepcopy=False))
        if have != seen:
            seen, changed = have, time.monotonic()
        time.sleep(SLOT_POLL)
    return _recorded_slots(study) >= count


def _claim(rdb: RDBStorage, trial_id: int) -> bool:
    """WAITING -> RUNNING as one conditional UPDATE: exactly one worker succeeds, on any database.

    (Optuna's own queue reads the state and then writes it, which two SQLite writers can both pass.)
    """
    from optuna.storages._rdb import models
    from sqlalchemy.exc import SQLAlchemyError

    session = rdb.scoped_session()
    try:
        updated = (
            session.query(models.TrialModel)
            .filter(models.TrialModel.trial_id == trial_id, models.TrialModel.state == TrialState.WAITING)
            .update({models.TrialModel.state: TrialState.RUNNING}, synchronize_session=False)
        )
        if updated == 1:
            row = session.get(models.TrialModel, trial_id)
            if row is not None:
                row.datetime_start = datetime.now()
        session.commit()
        return updated == 1
    except SQLAlchemyError:
        session.rollback()
        return False
    finally:
        session.close()


def pop_waiting_trial(study: optuna.Study, rdb: RDBStorage) -> optuna.Trial | None:
    """Take one WAITING trial for this worker (atomically, across threads and processes), or None."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if _claim(rdb, frozen._trial_id):
            rdb.record_heartbeat(frozen._trial_id)
            return optuna.Trial(study, frozen._trial_id)
    return None


def fail_dead_trials(study: optuna.Study) -> None:
    """Fail RUNNING trials whose worker is gone (stale heartbeat) and queue their retries.

    A trial's first heartbeat is written in the same moment it is taken (:func:`pop_waiting_trial`), so every
    RUNNING trial has one and a dead worker's trial always goes stale.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
