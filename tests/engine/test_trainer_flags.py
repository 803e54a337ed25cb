"""train.cudnn (Lightning's deterministic/benchmark flags) and train.optim.monitor_name (ReduceLROnPlateau)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ddetr.engine.module import DetectionModule
from ddetr.engine.trainer import DevicePlan, build_trainer
from ddetr.model.detector import DeformableDETR
from ddetr.spec.load import load_spec
from ddetr.status import StatusLogger

TINY = [
    "model.backbone=resnet_18",
    "model.hidden_dim=32",
    "model.nheads=2",
    "model.enc_layers=1",
    "model.dec_layers=1",
    "model.num_queries=10",
    "model.num_select=10",
    "dataset.num_classes=3",
]


@pytest.fixture()
def torch_flags() -> Iterator[None]:
    """Lightning sets process-wide torch flags: put them back after the test."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def _trainer(tmp_path: Path, *overrides: str):
    spec = load_spec(None, list(overrides))
    plan = DevicePlan("cpu", 1, 1, "auto", "32-true")
    return build_trainer(spec, tmp_path, StatusLogger(tmp_path / "status.json"), plan, steps_per_epoch=1)


@pytest.mark.usefixtures("torch_flags")
def test_cudnn_deterministic_true_turns_on_deterministic_algorithms_warn_only(tmp_path: Path) -> None:
    torch.use_deterministic_algorithms(False)
    _trainer(tmp_path, "train.cudnn.deterministic=true", "train.cudnn.benchmark=false")
    assert torch.are_deterministic_algorithms_enabled()
    assert (
        torch.is_deterministic_algorithms_warn_only_enabled()
    )  # grid_sample's CUDA backward must not stop a run
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.usefixtures("torch_flags")
def test_cudnn_deterministic_false_and_benchmark_true(tmp_path: Path) -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
    _trainer(tmp_path, "train.cudnn.deterministic=false", "train.cudnn.benchmark=true")
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark is True


@pytest.fixture()
def model() -> DeformableDETR:
    return DeformableDETR.from_config(load_spec(None, TINY).model, 3)


@pytest.mark.parametrize(
    ("monitor", "mode"),
    [("val_loss", "min"), ("train_loss", "min"), ("val_mAP", "max"), ("val_mAP50", "max")],
)
def test_reduce_on_plateau_watches_monitor_name(model: DeformableDETR, monitor: str, mode: str) -> None:
    spec = load_spec(
        None,
        [
            "train.optim.lr_scheduler=ReduceLROnPlateau",
            f"train.optim.monitor_name={monitor}",
            "train.optim.lr_step_size=1",
            "train.optim.lr_decay=0.5",
            "train.validation_interval=2",
        ],
    )
    config = DetectionModule(model, spec).configure_optimizers()
    schedule = config["lr_scheduler"]
    scheduler, optimizer = schedule["scheduler"], config["optimizer"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert schedule["monitor"] == monitor and scheduler.mode == mode
    # validation metrics exist every validation_interval epochs; the training loss every epoch
    assert schedule.get("frequency", 1) == (1 if monitor == "train_loss" else 2)
    base = optimizer.param_groups[0]["lr"]
    worse = [1.0, 2.0, 3.0] if mode == "min" else [3.0, 2.0, 1.0]
    for value in worse:  # patience 1: the second epoch without improvement halves the lr
        scheduler.step(value)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(base * 0.5)


def test_other_schedulers_carry_the_monitor_as_tao_does(model: DeformableDETR) -> None:
    spec = load_spec(None, ["train.optim.monitor_name=train_loss"])
    schedule = DetectionModule(model, spec).configure_optimizers()["lr_scheduler"]
    assert isinstance(schedule["scheduler"], torch.optim.lr_scheduler.MultiStepLR)
    assert schedule["monitor"] == "train_loss"


def test_unknown_monitor_is_one_line_at_spec_load() -> None:
    from ddetr.errors import SpecError

    with pytest.raises(SpecError, match=r"train\.optim\.monitor_name") as info:
        load_spec(None, ["train.optim.monitor_name=test_mAP"])
    assert "\n" not in str(info.value)


@pytest.mark.usefixtures("torch_flags")
def test_lightning_messages_are_printed_once(tmp_path: Path) -> None:
    """With ddetr's log handler on the root logger, a Lightning message reaches one handler: the root's (the top
    package 'lightning' adds its own stderr handler at import, which printed every message a second time)."""
    import logging

    from ddetr.cli import setup_logging

    setup_logging()
    _trainer(tmp_path)
    logger: logging.Logger | None = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handlers = []
    while logger is not None:  # the handlers a record meets on its way up (logging.Logger.callHandlers)
        handlers += logger.handlers
        logger = logger.parent if logger.propagate else None
    assert handlers == logging.getLogger().handlers
