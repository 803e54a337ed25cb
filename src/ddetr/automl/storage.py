"""Where the study lives: an Optuna RDB storage (SQLite file by default, any SQLAlchemy URL), shared by workers.

The study's trials are created up front as WAITING "slots" (``max_recommendations`` of them); every worker,
on this machine or another, takes WAITING trials one at a time, so no trial is run twice and the study stops
at its trial count. A worker that dies leaves a RUNNING trial whose heartbeat goes stale; the next worker
to look marks it FAIL and Optuna's retry callback puts a copy of it back in the queue.
"""

from __future__ import annotations

import logging
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
]

DEFAULT_STUDY_NAME = "ddetr-automl"
HEARTBEAT_INTERVAL = 5  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # seconds without a heartbeat after which a RUNNING trial is taken as dead
SCHEMA_ATTEMPTS = 5
MAX_RETRY = 3  # times a trial whose worker died is put back in the queue
SLOTS_ATTR = "max_recommendations"


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


def open_storage(
    url: str, *, heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD
) -> RDBStorage:
    """Open (and create the tables of) an Optuna RDB storage, with heartbeats and retry of dead trials.

    Raises:
        SpecError: the URL is malformed, its driver is missing, or the database cannot be reached.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # several processes write the same file
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
        except (IntegrityError, OperationalError) as exc:
            # Two workers creating the tables of a new database at once: the loser retries and finds them.
            racing = isinstance(exc, IntegrityError) or any(
                w in str(exc) for w in ("locked", "already exists")
            )
            if not racing or attempt == SCHEMA_ATTEMPTS - 1:
                raise _unreachable(url, exc) from None
            time.sleep(0.5 * (attempt + 1))
        except (SQLAlchemyError, ImportError, ValueError, OSError) as exc:
            raise _unreachable(url, exc) from None
    raise RuntimeError("open_storage: no attempt made")


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
    study: optuna.Study, count: int, created: bool, fixed: Sequence[dict[str, Any]] | None = None
) -> int:
    """Make the study hold ``count`` trials (existing ones count), adding WAITING ones as needed.

    Args:
        study: The study.
        count: ``automl.max_recommendations``.
        created: This process created the study (others wait a moment for its slots).
        fixed: Parameter sets of the new trials in order (grid points); empty mappings otherwise.

    Returns:
        The number of trials added.
    """
    if not created and SLOTS_ATTR not in study.user_attrs and not study.get_trials(deepcopy=False):
        for _ in range(20):  # the creator is enqueueing its slots right now
            time.sleep(0.25)
            if SLOTS_ATTR in study.user_attrs:
                break
    recorded = study.user_attrs.get(SLOTS_ATTR)
    if recorded is not None and count <= int(recorded):
        return 0
    have = len(effective_trials(study))
    wanted = count - have
    if fixed is not None:
        wanted = min(wanted, len(fixed) - have)  # grid points not in the study yet
    for i in range(max(0, wanted)):
        study.enqueue_trial(dict(fixed[have + i]) if fixed is not None else {})
    study.set_user_attr(SLOTS_ATTR, count)
    return max(0, wanted)


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
