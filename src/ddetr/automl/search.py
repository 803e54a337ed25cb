"""The search: Optuna samplers and pruners chosen by ``automl.algorithm``, and the worker loop.

``bayesian`` is Optuna's TPE sampler, ``random`` its random sampler, ``grid`` the cartesian product of the
values given in ``automl.range_override``; ``hyperband`` and ``asha`` use TPE with Optuna's Hyperband and
successive-halving pruners over the epochs of each trial (1 .. ``automl.max_epochs``, reduction factor
``automl.reduction_factor``). Each worker (``automl.max_concurrent`` per process, any number of processes on
the same storage) takes queued trials until none is left.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ddetr.automl import storage as st
from ddetr.automl.report import best_trial, shown_value, write_reports
from ddetr.automl.runner import TERMINATE_GRACE, TrialRunner
from ddetr.automl.space import SearchSpace, build_space, violations
from ddetr.errors import SpecError
from ddetr.spec.sections import Spec, is_set
from ddetr.status import StatusLogger

logger = logging.getLogger(__name__)

__all__ = ["Search", "check_search", "make_pruner", "make_sampler", "prepare_search", "run_search"]

WAIT_POLL = 2.0  # seconds between looks at the queue while other workers finish


def make_sampler(spec: Spec, space: SearchSpace, *, seeded: bool = True) -> optuna.samplers.BaseSampler:
    """The sampler of ``automl.algorithm``, seeded by ``train.seed`` (when >= 0 and ``seeded``).

    Only the process that creates a study seeds its sampler: a worker that joins or resumes a study must not
    replay the same sequence of suggestions.
    """
    seed = spec.train.seed if seeded and spec.train.seed >= 0 else None
    algorithm = spec.automl.algorithm
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    startup = max(1, min(10, spec.automl.max_recommendations // 4))
    if algorithm == "bayesian" and spec.automl.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def make_pruner(spec: Spec) -> optuna.pruners.BasePruner:
    """Hyperband or successive halving over epochs for ``hyperband``/``asha``; no pruning otherwise."""
    automl = spec.automl
    if automl.algorithm == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=automl.max_epochs, reduction_factor=automl.reduction_factor
        )
    if automl.algorithm == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=automl.reduction_factor
        )
    return optuna.pruners.NopPruner()


def grid_points(space: SearchSpace, base: Spec) -> list[dict[str, Any]]:
    """Every combination of the grid's values that keeps the rules (the others are never started)."""
    from ddetr.automl.space import apply_values

    names = space.names
    points = []
    for combo in itertools.product(*(p.choices for p in space.params)):
        values = dict(zip(names, combo))
        try:
            spec = apply_values(base, values)
        except SpecError:
            continue
        if not violations(spec):
            points.append(values)
    return points


@dataclass
class Search:
    """A prepared search: everything checked, the study opened and its trials queued."""

    spec: Spec
    space: SearchSpace
    automl_dir: Path
    study: optuna.Study
    url: str
    rdb: optuna.storages.RDBStorage
    added: int
    status: StatusLogger
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def check_search(spec: Spec) -> tuple[SearchSpace, list[dict[str, Any]] | None]:
    """The checks of the search that need the spec alone; ``ddetr automl`` runs them before making any folder.

    Returns:
        The search space, and (``algorithm: grid``) the grid points that keep the rules, else ``None``.

    Raises:
        SpecError: no results_dir, an unknown hyperparameter, a bad range, a base spec that breaks a rule, or
            an empty grid.
    """
    if not is_set(spec.results_dir):
        raise SpecError("results_dir is not set; automl writes its trials under <results_dir>/automl")
    test = spec.dataset.test_data_sources
    if spec.automl.metric.startswith("test_") and not (is_set(test.image_dir) and is_set(test.json_file)):
        raise SpecError(
            f"automl.metric={spec.automl.metric} evaluates each trial's checkpoint on dataset.test_data_sources, "
            "which is not set (image_dir and json_file); set it or use automl.metric=val_mAP"
        )
    space = build_space(spec)
    broken = violations(spec)
    if broken:
        raise SpecError(f"the base spec breaks a search rule: {broken[0]}")
    fixed = None
    if spec.automl.algorithm == "grid":
        fixed = grid_points(space, spec)
        if not fixed:
            raise SpecError("automl: every combination of the grid's values breaks a rule; widen the values")
    return space, fixed


def prepare_search(
    spec: Spec,
    automl_dir: Path,
    *,
    heartbeat_interval: int = st.HEARTBEAT_INTERVAL,
    grace_period: int = st.GRACE_PERIOD,
) -> Search:
    """Check the ``automl`` section (:func:`check_search`) and open the study, before any trial runs.

    Raises:
        SpecError: see :func:`check_search`, or an unreachable storage.
    """
    space, fixed = check_search(spec)
    url = st.storage_url(spec.automl.storage, automl_dir)
    storage = st.open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    name = spec.automl.study_name.strip() or st.DEFAULT_STUDY_NAME
    study, created = st.open_study(
        storage, name, spec.automl.direction, make_sampler(spec, space), make_pruner(spec)
    )
    if not created:
        study.sampler = make_sampler(spec, space, seeded=False)
    added = st.ensure_slots(study, storage, spec.automl.max_recommendations, fixed)
    status = StatusLogger(automl_dir / "status.json")
    return Search(spec, space, automl_dir, study, url, storage, added, status)


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = st.effective_trials(study)
    return {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}


def _worker(search: Search, runner: TrialRunner, deadline: float | None) -> None:
    study = search.study
    while not search.stop.is_set():
        if deadline is not None and time.monotonic() > deadline:
            logger.info("automl.timeout_minutes reached: no new trial is started")
            return
        st.fail_dead_trials(study)
        trial = st.pop_waiting_trial(study, search.rdb)
        if trial is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                return
            time.sleep(WAIT_POLL)  # others are running trials; one may die and come back to the queue
            continue
        frozen = runner.run(study, trial)
        _after_trial(search, frozen)


def _after_trial(search: Search, frozen: optuna.trial.FrozenTrial) -> None:
    metric = search.spec.automl.metric
    with search.lock:
        write_reports(search.study, search.spec, search.automl_dir, plots=False)
        counts = _counts(search.study)
        best = best_trial(search.study)
        kpi = {f"best_{metric}": best.value} if best is not None else {}
        value = shown_value(frozen)
        if value is not None:
            kpi[metric] = value
        search.status.running(
            f"Trial {frozen.number} {frozen.state.name}"
            + (f" ({frozen.user_attrs['error']})" if "error" in frozen.user_attrs else "")
            + (f"; best trial {best.number}" if best is not None else ""),
            kpi=kpi,
            trial=frozen.number,
            completed=counts["complete"],
            pruned=counts["pruned"],
            failed=counts["fail"],
            max_trials=search.spec.automl.max_recommendations,
        )


def run_search(
    spec: Spec,
    automl_dir: Path,
    *,
    train_command: Sequence[str] | None = None,
    evaluate_command: Sequence[str] | None = None,
    poll_interval: float = 1.0,
    heartbeat_interval: int = st.HEARTBEAT_INTERVAL,
    grace_period: int = st.GRACE_PERIOD,
) -> dict[str, Any]:
    """Run (or resume, or join) the search the spec describes.

    Args:
        spec: The validated spec.
        automl_dir: ``<results_dir>/automl`` (created).
        train_command: The training command before ``-e SPEC``; default ``python -m ddetr train``.
        evaluate_command: The evaluation command before ``-e SPEC`` (``automl.metric`` test_mAP/test_mAP50);
            default ``python -m ddetr evaluate``.
        poll_interval: Seconds between looks at a running trial.
        heartbeat_interval: Seconds between a running trial's heartbeats in the storage.
        grace_period: Seconds without a heartbeat after which a trial's worker is taken as dead.

    Returns:
        ``best_trial``, ``best_<metric>``, ``best_checkpoint``, ``best_spec``, ``leaderboard`` and the number of
        trials per state.

    Raises:
        SpecError: see :func:`prepare_search`.
    """
    automl_dir.mkdir(parents=True, exist_ok=True)
    search = prepare_search(
        spec, automl_dir, heartbeat_interval=heartbeat_interval, grace_period=grace_period
    )
    automl = spec.automl
    search.status.started(
        f"AutoML {automl.algorithm} search of {', '.join(search.space.names)}: "
        f"{automl.max_recommendations} trials, study {search.study.study_name!r} in {st._hidden(search.url)}",
        max_trials=automl.max_recommendations,
    )
    runner = TrialRunner(
        spec,
        search.space,
        automl_dir,
        train_command=train_command,
        evaluate_command=evaluate_command,
        poll_interval=poll_interval,
        stop=search.stop,
    )
    deadline = time.monotonic() + automl.timeout_minutes * 60 if automl.timeout_minutes > 0 else None
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            _worker(search, runner, deadline)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            search.stop.set()

    try:
        if automl.max_concurrent == 1:
            _worker(search, runner, deadline)
        else:
            threads = [
                threading.Thread(target=guarded, name=f"automl-{i}", daemon=True)
                for i in range(automl.max_concurrent)
            ]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.5)
            if errors and not isinstance(errors[0], KeyboardInterrupt):
                raise errors[0]
    except BaseException:
        search.stop.set()
        for t in threads:  # let running trials stop and go back to the queue
            t.join(timeout=TERMINATE_GRACE + 5)
        search.status.failure("AutoML search interrupted; run the same command again to resume it.")
        raise
    best = write_reports(search.study, spec, automl_dir)
    counts = _counts(search.study)
    metric = automl.metric
    result: dict[str, Any] = {
        "trials": automl.max_recommendations,
        **{k: counts[k] for k in ("complete", "pruned", "fail")},
        "leaderboard": str(automl_dir / "leaderboard.csv"),
    }
    if best:
        result.update(
            best_trial=best["trial"],
            **{f"best_{metric}": best["value"]},
            best_checkpoint=best["checkpoint"],
            best_spec=best["spec"],
        )
        search.status.success(
            f"AutoML search finished: best trial {best['trial']} with {metric}={best['value']:.4f}",
            kpi={f"best_{metric}": best["value"]},
        )
    else:
        search.status.success("AutoML search finished with no completed trial", verbosity="WARNING")
    return result
