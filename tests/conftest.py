"""Shared fixtures: a tiny synthetic dataset and a tiny, fast spec."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest


def _tiny_overrides(data: dict, results_dir: Path) -> list[str]:
    """Spec overrides for a model and data small enough to train in seconds on a CPU."""
    train, val = data["train"], data["val"]
    return [
        f"results_dir={results_dir}",
        "model.backbone=resnet_18",
        "model.hidden_dim=32",
        "model.nheads=2",
        "model.enc_layers=1",
        "model.dec_layers=2",
        "model.dim_feedforward=64",
        "model.num_queries=10",
        "model.num_select=10",
        "model.num_feature_levels=1",
        "model.return_interm_indices=[3]",
        "model.dropout_ratio=0.0",
        "dataset.num_classes=4",
        "dataset.batch_size=4",
        "dataset.workers=0",
        f"dataset.train_data_sources=[{{image_dir: {train['image_dir']}, json_file: {train['json_file']}}}]",
        f"dataset.val_data_sources=[{{image_dir: {val['image_dir']}, json_file: {val['json_file']}}}]",
        f"dataset.test_data_sources={{image_dir: {val['image_dir']}, json_file: {val['json_file']}}}",
        f"dataset.infer_data_sources={{image_dir: [{val['image_dir']}], classmap: {data['classmap']}}}",
        "dataset.augmentation.scales=[64]",
        "dataset.augmentation.train_random_resize=[64]",
        "dataset.augmentation.train_random_crop_min=48",
        "dataset.augmentation.train_random_crop_max=64",
        "dataset.augmentation.random_resize_max_size=96",
        "dataset.augmentation.test_random_resize=64",
        "train.num_epochs=2",
        "train.optim.lr_steps=[1]",
        "train.seed=7",
    ]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The synthetic shapes dataset at 64 px: 16 training and 8 validation images (real JPEG + COCO json)."""
    from ddetr.data.synthetic import generate_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(out, num_train=16, num_val=8, image_size=(64, 64), seed=3)


@pytest.fixture(scope="session")
def tiny_overrides() -> Callable[[dict, Path], list[str]]:
    """The function building tiny-experiment overrides from a dataset dict and a results folder."""
    return _tiny_overrides


@pytest.fixture()
def tiny_spec_args(tiny_data: dict, tmp_path: Path) -> list[str]:
    """Overrides of a tiny experiment writing into a fresh results_dir."""
    return _tiny_overrides(tiny_data, tmp_path / "results")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The whole demo (``python -m ddetr.demo --results-dir <folder>``), run once for every slow test that reads
    it: its folder and what it printed."""
    import contextlib
    import io

    from ddetr import demo

    root = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = demo.main(["--results-dir", str(root)])
    assert code == 0, printed.getvalue()
    return root, printed.getvalue()


@pytest.fixture(autouse=True)
def _restore_logging():
    """``ddetr.cli.main()`` configures the root logger; undo it so every test sees pytest's setup."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session", autouse=True)
def _jobs_db(tmp_path_factory: pytest.TempPathFactory):
    """Every action a test runs records into a job registry in a temporary folder, never ~/.ddetr/jobs.db."""
    import os

    folder = tmp_path_factory.mktemp("jobs")
    before = os.environ.get("DDETR_JOBS_DB")
    os.environ["DDETR_JOBS_DB"] = str(folder / "jobs.db")
    yield folder / "jobs.db"
    if before is None:
        os.environ.pop("DDETR_JOBS_DB", None)
    else:
        os.environ["DDETR_JOBS_DB"] = before
