"""AutoML trials are recorded as child jobs of the AutoML job; the search's best checkpoint is one of theirs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from automl_helpers import LR_SEARCH
from ddetr.automl import runner
from ddetr.jobs.registry import Registry
from ddetr.jobs.view import best, tree, tree_lines
from ddetr.spec.load import load_spec
from ddetr.tasks import automl
from ddetr.tasks.jobrecord import PARENT_ENV

RECORDED_FAKE = [sys.executable, str(Path(__file__).parent / "fake_recorded_train.py")]


@pytest.mark.slow  # a two-trial AutoML search
def test_trials_are_children_of_the_automl_job(
    tiny_spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "jobs.db"
    monkeypatch.setenv("DDETR_JOBS_DB", str(db))
    monkeypatch.setattr(runner, "default_train_command", lambda: RECORDED_FAKE)
    spec = load_spec(tiny_spec_file, ["automl.algorithm=random", "automl.max_recommendations=2", *LR_SEARCH])
    result = automl.run(spec)
    assert result.complete == 2
    assert PARENT_ENV not in __import__("os").environ  # the search's id does not leak to later runs
    registry = Registry(db)
    search_id = json.loads((Path(spec.results_dir) / "automl" / "job.json").read_text())["job_id"]
    search = registry.get(search_id)
    assert search.action == "automl" and search.status == "success" and search.kpis["trials"] == 2
    trials = registry.children(search_id)
    assert [t.action for t in trials] == ["train", "train"] and {t.status for t in trials} == {"success"}
    assert {Path(t.results_dir).parent.name for t in trials} == {"trial_000", "trial_001"}
    # the best checkpoint of the search is the best of its trials' checkpoints
    _, chosen = best(registry, search_id)
    scored = [a for t in trials for a in t.artefacts if a.kind == "checkpoint"]
    assert len(scored) == 4 and chosen.kpis["val_mAP"] == max(a.kpis["val_mAP"] for a in scored)
    assert str(result.best_checkpoint).startswith(str(Path(chosen.path).parent))
    lines = tree_lines(tree(registry, trials[0].id))
    assert lines[0].startswith(f"{search_id} automl success") and len(lines) == 3
