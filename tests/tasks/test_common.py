"""prepare_results_dir: the action folder, experiment.yaml, clear errors."""

from __future__ import annotations

import pytest

from ddetr.errors import SpecError
from ddetr.spec.load import load_spec
from ddetr.spec.sections import MISSING
from ddetr.tasks.common import prepare_results_dir


def test_creates_action_dir_and_writes_resolved_spec(tmp_path):
    spec = load_spec(None, [f"results_dir={tmp_path / 'r'}", "train.num_epochs=3"])
    folder = prepare_results_dir(spec, "train")
    assert folder == tmp_path / "r" / "train"
    assert load_spec(folder / "experiment.yaml") == spec


def test_section_results_dir_wins(tmp_path):
    spec = load_spec(None, [f"results_dir={tmp_path}", f"evaluate.results_dir={tmp_path / 'mine'}"])
    assert prepare_results_dir(spec, "evaluate") == tmp_path / "mine"


@pytest.mark.parametrize("value", ["", MISSING])
def test_unset_results_dir_is_a_clear_error(value):
    spec = load_spec(None, [f"results_dir={value}"])
    with pytest.raises(SpecError, match="results_dir is not set"):
        prepare_results_dir(spec, "train")


def test_unwritable_results_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    spec = load_spec(None, [f"results_dir={blocker}"])
    with pytest.raises(SpecError, match=r"results_dir: cannot write to .*a_file"):
        prepare_results_dir(spec, "train")
