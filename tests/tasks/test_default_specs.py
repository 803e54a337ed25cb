"""default_specs writes one template per action into results_dir; each loads back to the defaults."""

from __future__ import annotations

import pytest

from ddetr.errors import SpecError
from ddetr.spec.load import load_spec
from ddetr.spec.sections import Spec
from ddetr.status import read_status
from ddetr.tasks import default_specs

ACTIONS = ("train", "evaluate", "inference", "export", "quantize", "gen_trt_engine", "automl")


def test_writes_every_template_and_each_round_trips(tmp_path):
    result = default_specs.run(load_spec(None, [f"results_dir={tmp_path}"]))
    assert sorted(result.specs) == sorted(tmp_path / f"{a}.yaml" for a in ACTIONS)
    for action in ACTIONS:
        assert load_spec(tmp_path / f"{action}.yaml") == Spec()
    assert (tmp_path / "default_specs" / "experiment.yaml").is_file()
    statuses = [e["status"] for e in read_status(tmp_path / "default_specs" / "status.json")]
    assert statuses == ["STARTED", "SUCCESS"]


def test_needs_results_dir():
    with pytest.raises(SpecError, match="results_dir"):
        default_specs.run(Spec())
