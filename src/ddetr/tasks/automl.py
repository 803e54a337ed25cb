"""``ddetr automl``: hyperparameter search over the spec (docs/automl.md), and the ``automl_policy`` switch of train."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ddetr.spec.sections import Spec
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import AutomlResult

logger = logging.getLogger(__name__)

__all__ = ["maybe_route", "run", "search_result", "wants_search"]


@recorded("automl")
def run(spec: Spec) -> AutomlResult:
    """Run, resume or join the search in ``<results_dir>/automl``.

    Returns:
        The trial counts and the best trial (number, metric, checkpoint path, best_spec.yaml path).

    Raises:
        SpecError: a bad ``automl`` section or an unreachable storage, before any trial runs.
    """
    from ddetr.automl.search import check_search, run_search
    from ddetr.tasks.common import prepare_results_dir

    check_search(spec)  # a bad automl section fails in one line before the results folder is made
    automl_dir = prepare_results_dir(spec, "automl")
    from ddetr.tasks.report import write_report_quietly

    found = search_result(run_search(spec, automl_dir), spec.automl.metric)
    return dataclasses.replace(found, report=write_report_quietly(automl_dir, "automl"))


def search_result(found: dict[str, Any], metric: str) -> AutomlResult:
    """The :class:`AutomlResult` of :func:`ddetr.automl.search.run_search`'s summary mapping."""

    def path(key: str) -> Path | None:
        return Path(found[key]) if found.get(key) else None

    best_value = found.get(f"best_{metric}")
    return AutomlResult(
        trials=int(found["trials"]),
        complete=int(found["complete"]),
        pruned=int(found["pruned"]),
        failed=int(found["fail"]),
        leaderboard=Path(found["leaderboard"]),
        metric=metric,
        best_trial=found.get("best_trial"),
        best_value=float(best_value) if best_value is not None else None,
        best_checkpoint=path("best_checkpoint"),
        best_spec=path("best_spec"),
    )


def wants_search(spec: Spec) -> bool:
    """True when a train request must go through the search (``automl_policy=on`` or ``automl.enabled=true``)."""
    return spec.automl_policy == "on" or spec.automl.enabled


def maybe_route(spec: Spec) -> AutomlResult | None:
    """Called by ``train``: run the search instead when the spec asks for it, else return None (train once)."""
    if not wants_search(spec):
        return None
    logger.info("automl_policy=on: this training request runs as a hyperparameter search (ddetr automl)")
    return run(spec)
