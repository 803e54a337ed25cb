"""``ddetr automl``: hyperparameter search over the spec (docs/automl.md), and the ``automl_policy`` switch of train."""

from __future__ import annotations

import logging
from typing import Any

from ddetr.spec.sections import Spec

logger = logging.getLogger(__name__)

__all__ = ["maybe_route", "run", "wants_search"]


def run(spec: Spec) -> dict[str, Any]:
    """Run, resume or join the search in ``<results_dir>/automl``.

    Returns:
        The best trial (number, metric, checkpoint path, best_spec.yaml path) and the trial counts.

    Raises:
        SpecError: a bad ``automl`` section or an unreachable storage, before any trial runs.
    """
    from ddetr.automl.search import check_search, run_search
    from ddetr.tasks.common import prepare_results_dir

    check_search(spec)  # a bad automl section fails in one line before the results folder is made
    automl_dir = prepare_results_dir(spec, "automl")
    return run_search(spec, automl_dir)


def wants_search(spec: Spec) -> bool:
    """True when a train request must go through the search (``automl_policy=on`` or ``automl.enabled=true``)."""
    return spec.automl_policy == "on" or spec.automl.enabled


def maybe_route(spec: Spec) -> dict[str, Any] | None:
    """Called by ``train``: run the search instead when the spec asks for it, else return None (train once)."""
    if not wants_search(spec):
        return None
    logger.info("automl_policy=on: this training request runs as a hyperparameter search (ddetr automl)")
    return run(spec)
