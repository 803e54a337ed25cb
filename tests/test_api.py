"""The Python API (``ddetr.train``, ...): typed results, spec files or Spec objects, keyword overrides validated
as the command line's, our error types and never ``SystemExit``; the README's example runs."""

from __future__ import annotations

import doctest
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ddetr
import ddetr.api
from ddetr.cli import main
from ddetr.errors import CheckpointError, DataError, SpecError
from ddetr.spec.load import dump_spec, load_spec
from ddetr.spec.sections import Spec
from ddetr.tasks.results import ConvertResult, DatasetResult, DefaultSpecsResult, TrainResult

README = Path(__file__).resolve().parents[1] / "README.md"
FIRST = "model_epoch_000_step_00004.pth"  # 16 images at batch 4: 4 steps per epoch
SECOND = "model_epoch_001_step_00008.pth"


@pytest.fixture(scope="module")
def trained(
    tiny_data: dict, tiny_overrides, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, TrainResult]:
    """The tiny experiment as a spec file, trained 1 epoch through the API: (spec file, results_dir, result)."""
    folder = tmp_path_factory.mktemp("api")
    spec_file = dump_spec(
        load_spec(None, tiny_overrides(tiny_data, folder / "elsewhere")), folder / "spec.yaml"
    )
    results = folder / "results"
    result = ddetr.train(spec_file, results_dir=results, train__num_epochs=1)  # a Path value is fine
    return spec_file, results, result


def _copy(results: Path, to: Path) -> Path:
    """A copy of a results folder (the latest link stays relative), to resume without touching the original."""
    shutil.copytree(results, to, symlinks=True)
    return to


def test_train_returns_its_checkpoints_with_kpis(trained) -> None:
    _, results, result = trained
    assert isinstance(result, TrainResult)
    train_dir = (results / "train").resolve()
    assert result.train_dir == train_dir
    [checkpoint] = result.checkpoints
    assert checkpoint.path == train_dir / FIRST and checkpoint.path.is_file()
    assert (checkpoint.epoch, checkpoint.step) == (0, 4)
    assert 0.0 <= checkpoint.val_mAP <= 1.0 and 0.0 <= checkpoint.val_mAP50 <= 1.0 and checkpoint.val_loss > 0
    assert result.best == checkpoint
    assert result.latest == (train_dir / "dd_model_latest.pth").resolve() == checkpoint.path
    assert (result.epochs, result.steps) == (1, 4)
    assert result.val_metrics == {
        "val_mAP": checkpoint.val_mAP,
        "val_mAP50": checkpoint.val_mAP50,
        "val_loss": checkpoint.val_loss,
    }
    summary = result.summary()
    assert summary["checkpoint"] == str(checkpoint.path) and summary["epochs"] == 1
    assert all(isinstance(v, (str, int, float)) for v in summary.values())
    recorded = load_spec(results / "train" / "experiment.yaml")
    assert recorded.train.num_epochs == 1 and recorded.results_dir == str(results)


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # resuming a copied results folder
def test_a_spec_object_resumes_and_every_checkpoint_keeps_its_kpis(trained, tmp_path: Path) -> None:
    spec_file, results, first = trained
    copy = _copy(results, tmp_path / "results")
    spec = ddetr.load_spec(spec_file, results_dir=copy)
    assert isinstance(spec, Spec) and spec.results_dir == str(copy) and spec.train.num_epochs == 2
    result = ddetr.train(spec, train__num_epochs=2)
    assert [c.path.name for c in result.checkpoints] == [FIRST, SECOND]
    # the first checkpoint's KPIs come from the earlier run's status.json
    assert result.checkpoints[0].val_mAP == first.checkpoints[0].val_mAP
    assert all(c.val_mAP is not None and c.path.is_file() for c in result.checkpoints)
    assert result.latest == result.checkpoints[-1].path and result.steps == 8
    assert ddetr.load_spec(spec, train__num_epochs=5).train.num_epochs == 5 and spec.train.num_epochs == 2


def test_check_dataset_and_default_specs_take_a_spec_object(trained, tmp_path: Path, capsys) -> None:
    spec_file, _, _ = trained
    spec = ddetr.load_spec(spec_file, results_dir=tmp_path)
    checked = ddetr.check_dataset(spec)
    assert isinstance(checked, DatasetResult) and checked.report.is_file() and checked.errors == 0
    assert checked.images == 16 + 8 + 8 + 8  # train, val, test (= val) and infer (= val images)
    capsys.readouterr()
    templates = ddetr.default_specs(spec)
    assert isinstance(templates, DefaultSpecsResult) and tmp_path / "train.yaml" in templates.specs
    assert all(p.is_file() for p in templates.specs)
    assert capsys.readouterr().out == ""  # logging only


@pytest.mark.parametrize(
    ("keywords", "argument"),
    [
        ({"model__num_feature_levels": 9}, "model.num_feature_levels=9"),
        ({"train__num_epochs": "ten"}, "train.num_epochs=ten"),
        ({"train__num_epoch": 3}, "train.num_epoch=3"),
        ({"dataset__batch_size__x": 1}, "dataset.batch_size.x=1"),
        ({"dataset__augmentation__scales": [64, "big"]}, "dataset.augmentation.scales=[64, big]"),
    ],
)
def test_a_bad_override_is_the_error_the_cli_prints(keywords: dict, argument: str, capsys) -> None:
    with pytest.raises(SpecError) as raised:
        ddetr.train(None, **keywords)
    assert main(["train", argument]) == 2
    assert capsys.readouterr().err.strip() == f"error: {raised.value}"


def test_an_unknown_keyword_names_the_closest_key() -> None:
    with pytest.raises(
        SpecError, match=r"unknown key 'num_epoch' in section 'train'.*did you mean 'num_epochs'"
    ):
        ddetr.train(None, train__num_epoch=3)
    with pytest.raises(SpecError, match="did you mean 'results_dir'"):
        ddetr.evaluate(None, result_dir="out")


def test_errors_are_our_types_never_system_exit(tmp_path: Path, capsys) -> None:
    cases = [
        (lambda: ddetr.default_specs(None), SpecError),  # results_dir is not set
        (lambda: ddetr.export(None, results_dir=tmp_path), SpecError),  # export.checkpoint is not set
        (lambda: ddetr.train(42), SpecError),
        (lambda: ddetr.api.run_action("fly", None), SpecError),
        (lambda: ddetr.import_weights("tf", tmp_path / "in.pth", tmp_path / "out.pth"), SpecError),
        (
            lambda: ddetr.import_weights("original", tmp_path / "missing.pth", tmp_path / "o.pth"),
            CheckpointError,
        ),
        (lambda: ddetr.convert("yolo", tmp_path, tmp_path, tmp_path / "x.json", tolerance=-1), DataError),
    ]
    for call, error in cases:
        try:
            with pytest.raises(error):
                call()
        except SystemExit:  # pragma: no cover - what this test guards against
            pytest.fail(f"the API called sys.exit instead of raising {error.__name__}")
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "o.pth").exists()


def test_convert_returns_its_counts(tmp_path: Path) -> None:
    from PIL import Image

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (64, 48)).save(images / f"{name}.jpg")
    (labels / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.25 0.25 0.125 0.125\n")
    (tmp_path / "classes.txt").write_text("leaf\nstem\n")
    result = ddetr.convert("yolo", images, labels, tmp_path / "train.json", classes=tmp_path / "classes.txt")
    assert isinstance(result, ConvertResult) and result.output.is_file()
    assert (result.images, result.images_without_labels, result.boxes) == (2, 1, 2)
    assert result.boxes_per_class == {"leaf": 1, "stem": 1} and result.num_classes == 3
    assert result.classmap == tmp_path / "classes.txt"
    assert any(line.startswith("spec: dataset.num_classes: 3 ") for line in result.lines())


def test_the_key_comes_from_the_environment_when_the_spec_has_none(monkeypatch) -> None:
    monkeypatch.setenv("DDETR_ENCRYPTION_KEY", "from-env")
    assert ddetr.load_spec(None).encryption_key == "from-env"
    assert ddetr.load_spec(None, encryption_key="mine").encryption_key == "mine"
    monkeypatch.delenv("DDETR_ENCRYPTION_KEY")
    assert ddetr.load_spec(None).encryption_key == ""


def test_automl_search_runs_the_automl_task(monkeypatch, tmp_path: Path) -> None:
    import ddetr.automl.search

    seen = []
    monkeypatch.setattr("ddetr.tasks.automl.run", lambda spec: seen.append(spec) or "searched")
    assert ddetr.automl_search(None, results_dir=tmp_path) == "searched"
    assert seen[0].results_dir == str(tmp_path)


def test_import_ddetr_stays_cheap() -> None:
    code = "import sys, ddetr; print(sorted(m for m in ('torch', 'ddetr.api', 'ddetr.tasks') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert set(ddetr.__all__) >= {"train", "evaluate", "inference", "export", "quantize", "load_spec", "Spec"}


def test_the_api_docstring_examples_run() -> None:
    outcome = doctest.testmod(ddetr.api, optionflags=doctest.ELLIPSIS)
    assert outcome.attempted >= 1 and outcome.failed == 0


def _readme_example() -> str:
    python = README.read_text(encoding="utf-8").split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", python, flags=re.S)
    return next(b for b in blocks if "ddetr.train(" in b)


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_the_readme_example_runs(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    """The README's train + evaluate example, on the tiny experiment already trained (training resumes: done)."""
    spec_file, results, first = trained
    copy = _copy(results, tmp_path / "results")
    dump_spec(load_spec(spec_file, [f"results_dir={copy}", "train.num_epochs=1"]), tmp_path / "spec.yaml")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), str(README), "exec"), namespace)
    assert [c.path.name for c in namespace["result"].checkpoints] == [FIRST]
    assert namespace["result"].best.val_mAP == first.best.val_mAP
    metrics = namespace["metrics"]
    assert metrics.model == copy / "train" / FIRST and metrics.images == 8
    assert 0.0 <= metrics.test_mAP <= 1.0 and set(metrics.per_class_AP) == {"circle", "square", "triangle"}
    assert f"{FIRST} 0 " in capsys.readouterr().out
