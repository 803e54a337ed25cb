"""automl.metric as TAO defines it: val_* from training, test_* from evaluating each trial's checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from automl_helpers import AUTOML_TESTS, FAKE, LR_SEARCH, precreate_study, sqlite_study, sqlite_url
from ddetr.automl.search import run_search
from ddetr.cli import main as cli_main
from ddetr.errors import SpecError
from ddetr.spec.load import load_spec

FAKE_EVALUATE = [sys.executable, str(AUTOML_TESTS / "fake_evaluate.py")]
# 3e-4 has the best validation mAP (fake_train.py), 1e-5 the best test mAP (fake_evaluate.py)
LRS = [3e-4, 1e-5]


def _test_data(spec_file: Path) -> list[str]:
    spec = load_spec(spec_file)
    val = spec.dataset.val_data_sources[0]  # any annotated set will do for the stand-in evaluator
    return [
        f"dataset.test_data_sources.image_dir={val.image_dir}",
        f"dataset.test_data_sources.json_file={val.json_file}",
    ]


def _search(spec_file: Path, *overrides: str) -> tuple[dict, Path]:
    spec = load_spec(
        spec_file, ["automl.algorithm=random", "automl.max_recommendations=2", *LR_SEARCH, *overrides]
    )
    results = Path(spec.results_dir)
    precreate_study(sqlite_url(results), LRS)
    out = run_search(
        spec, results / "automl", train_command=FAKE, evaluate_command=FAKE_EVALUATE, poll_interval=0.05
    )
    return out, results


@pytest.mark.parametrize("metric", ["test_mAP", "test_mAP50"])
def test_test_metric_ranks_trials_by_their_evaluated_checkpoint(tiny_spec_file: Path, metric: str) -> None:
    out, results = _search(tiny_spec_file, f"automl.metric={metric}", *_test_data(tiny_spec_file))
    trials = sqlite_study(results).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    for trial in trials:
        folder = results / "automl" / f"trial_{trial.number:03d}"
        metrics = json.loads((folder / "evaluate" / "metrics.json").read_text())
        # the value is the evaluation of the trial's own checkpoint, not its last validation
        assert trial.value == pytest.approx(metrics[metric])
        assert Path(metrics["model"]) == Path(trial.user_attrs["checkpoint"])
        assert f"trial_{trial.number:03d}" in metrics["model"]
        assert trial.user_attrs["val_" + metric[len("test_") :]] != trial.value
    assert out["best_trial"] == 1 and out[f"best_{metric}"] == pytest.approx(trials[1].value)
    best = json.loads((results / "automl" / "best_trial.json").read_text())
    assert best["metric"] == metric and best["trial"] == 1


def test_val_metric_ranks_by_validation_and_runs_no_evaluation(tiny_spec_file: Path) -> None:
    out, results = _search(tiny_spec_file, "automl.metric=val_mAP")
    assert out["best_trial"] == 0  # the other lr wins on validation
    assert not list((results / "automl").glob("trial_*/evaluate"))


def test_failed_evaluation_fails_the_trial(tiny_spec_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_EVALUATE_FAIL", "1")
    out, results = _search(tiny_spec_file, "automl.metric=test_mAP", *_test_data(tiny_spec_file))
    trials = sqlite_study(results).get_trials()
    assert all(t.state == TrialState.FAIL for t in trials) and out["fail"] == 2
    assert "evaluation exited with code 2" in trials[0].user_attrs["error"]


def test_val_loss_is_refused_with_the_reason_at_spec_load(tiny_spec_file: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tiny_spec_file, ["automl.metric=val_loss"])
    message = str(info.value)
    assert message.startswith("automl.metric: val_loss is refused") and "\n" not in message
    assert "not comparable between trials" in message and "test_mAP" in message


def test_test_metric_without_test_data_is_one_line_before_any_trial(
    tiny_spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["automl", "-e", str(tiny_spec_file), "automl.metric=test_mAP"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        code == 2 and err.startswith("error: automl.metric=test_mAP") and "dataset.test_data_sources" in err
    )
    assert not (Path(load_spec(tiny_spec_file).results_dir) / "automl").exists()
