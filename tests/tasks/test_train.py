"""End-to-end training on the tiny synthetic dataset: checkpoints, status.json, resume, dry run, freeze."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ddetr.artefacts.checkpoint import load_checkpoint
from ddetr.errors import SpecError
from ddetr.spec.load import load_spec
from ddetr.status import read_status
from ddetr.tasks import train
from ddetr.tasks.results import AutomlResult


def _train_dir(args: list[str]) -> Path:
    results = next(a.split("=", 1)[1] for a in args if a.startswith("results_dir="))
    return Path(results) / "train"


def test_train_writes_tao_checkpoints_status_and_resumes(tiny_spec_args: list[str]) -> None:
    result = train.run(load_spec(None, tiny_spec_args))
    train_dir = _train_dir(tiny_spec_args)

    names = sorted(p.name for p in train_dir.glob("model_epoch_*.pth"))
    # 16 images at batch 4 = 4 optimizer steps per epoch; epochs count from 0
    assert names == ["model_epoch_000_step_00004.pth", "model_epoch_001_step_00008.pth"]
    latest = train_dir / "dd_model_latest.pth"
    assert latest.is_symlink() and latest.resolve().name == "model_epoch_001_step_00008.pth"
    assert (train_dir / "experiment.yaml").is_file()
    assert result.latest == latest.resolve()

    # self-describing checkpoint: architecture, classes and spec
    info = load_checkpoint(latest)
    assert info.card.model.hidden_dim == 32 and info.card.model.dec_layers == 2
    assert info.card.num_classes == 4
    assert info.card.class_names == ("", "circle", "square", "triangle")
    assert info.spec["dataset"]["num_classes"] == 4

    events = read_status(train_dir / "status.json")
    assert events[0]["status"] == "STARTED" and events[-1]["status"] == "SUCCESS"
    vals = [e["kpi"] for e in events if e["status"] == "RUNNING" and "val_mAP" in e.get("kpi", {})]
    assert len(vals) == 2
    for kpi in vals:
        assert 0.0 <= kpi["val_mAP"] <= 1.0 and 0.0 <= kpi["val_mAP50"] <= 1.0
        assert kpi["val_loss"] > 0
    assert any("train_loss" in e.get("kpi", {}) for e in events)
    for line in (train_dir / "status.json").read_text().splitlines():
        event = json.loads(line)
        assert {"date", "time", "status", "verbosity", "message"} <= set(event)

    # resume: the same command with more epochs continues at epoch 2 and step 8
    more = [*tiny_spec_args, "train.num_epochs=3"]
    train.run(load_spec(None, more))
    names = sorted(p.name for p in train_dir.glob("model_epoch_*.pth"))
    assert names[-1] == "model_epoch_002_step_00012.pth"
    assert len(names) == 3
    resumed = torch.load(latest, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 12
    assert resumed["optimizer_states"], "optimizer state must be saved for resuming"


def test_step_interval_checkpoints(tiny_spec_args: list[str]) -> None:
    args = [
        *tiny_spec_args,
        "train.num_epochs=1",
        "train.checkpoint_interval=2",
        "train.checkpoint_interval_unit=step",
    ]
    train.run(load_spec(None, args))
    steps = sorted(
        int(re.search(r"step_(\d+)", p.name).group(1)) for p in _train_dir(args).glob("model_epoch_*")
    )
    assert steps[:2] == [2, 4]


def test_reduce_on_plateau_steps_on_monitor_name(tiny_spec_args: list[str]) -> None:
    args = [
        *tiny_spec_args,
        "train.optim.lr_scheduler=ReduceLROnPlateau",
        "train.optim.monitor_name=val_mAP",
    ]
    train.run(load_spec(None, args))
    # a checkpoint is written before its epoch's scheduler step: epoch 1's holds the step after epoch 0
    saved = torch.load(_train_dir(args) / "dd_model_latest.pth", map_location="cpu", weights_only=True)
    (state,) = saved["lr_schedulers"]
    events = read_status(_train_dir(args) / "status.json")
    first = next(e["kpi"] for e in events if "val_mAP" in e.get("kpi", {}))
    assert state["mode"] == "max" and state["best"] == pytest.approx(first["val_mAP"])


def test_dry_run_keeps_nothing(tiny_spec_args: list[str]) -> None:
    args = [*tiny_spec_args, "train.is_dry_run=true"]
    train.run(load_spec(None, args))
    assert not list(_train_dir(args).glob("*.pth"))


@pytest.mark.parametrize("deterministic", [True, False])
def test_torch_flags_train_cudnn_sets_are_restored_when_train_returns(
    tiny_spec_args: list[str], deterministic: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning sets torch's process-wide deterministic/cuDNN flags; train() puts the caller's back."""
    from ddetr.engine import trainer as engine_trainer

    outside = engine_trainer.TorchFlags.capture()
    # the caller's settings: the opposite of what the spec asks for, so that a leak shows
    torch.use_deterministic_algorithms(not deterministic)
    torch.backends.cudnn.benchmark = deterministic
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = engine_trainer.TorchFlags.capture()
    seen = []
    build = engine_trainer.build_trainer

    def spying_build(*args, **kwargs):
        made = build(*args, **kwargs)
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))
        return made

    monkeypatch.setattr(engine_trainer, "build_trainer", spying_build)
    args = [
        *tiny_spec_args,
        "train.is_dry_run=true",
        f"train.cudnn.deterministic={str(deterministic).lower()}",
        f"train.cudnn.benchmark={str(not deterministic).lower()}",
    ]
    try:
        train.run(load_spec(None, args))
        assert seen == [(deterministic, not deterministic)]  # in force during the fit
        assert engine_trainer.TorchFlags.capture() == before
    finally:
        outside.restore()


def test_freeze_and_pretrained(tiny_spec_args: list[str], tmp_path: Path) -> None:
    first = [*tiny_spec_args, "train.num_epochs=1"]
    train.run(load_spec(None, first))
    ckpt = _train_dir(first) / "dd_model_latest.pth"
    before = load_checkpoint(ckpt).state_dict

    args = [
        *tiny_spec_args,
        f"results_dir={tmp_path / 'second'}",
        "train.num_epochs=1",
        "train.freeze=[backbone]",
        f"train.pretrained_model_path={ckpt}",
    ]
    train.run(load_spec(None, args))
    after = load_checkpoint(tmp_path / "second" / "train" / "dd_model_latest.pth").state_dict
    frozen = [k for k in before if k.startswith("backbone.body.layer4") and k.endswith("weight")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    moved = [k for k in before if k.startswith("transformer.") and not torch.equal(before[k], after[k])]
    assert moved, "the transformer must keep training"


def test_freeze_unknown_module_is_one_line_error(tiny_spec_args: list[str]) -> None:
    with pytest.raises(SpecError, match=r"train.freeze: no module named 'nope'"):
        train.run(load_spec(None, [*tiny_spec_args, "train.freeze=[nope]"]))


def test_dataset_smaller_than_batch_is_error(tiny_spec_args: list[str]) -> None:
    from ddetr.errors import DataError

    with pytest.raises(DataError, match="16"):
        train.run(load_spec(None, [*tiny_spec_args, "dataset.batch_size=17"]))


def test_no_gpu_notice(tiny_spec_args: list[str], caplog: pytest.LogCaptureFixture) -> None:
    from ddetr.engine.trainer import plan_devices

    spec = load_spec(
        None, [*tiny_spec_args, "train.num_gpus=2", "train.gpu_ids=[0,1]", "train.precision=fp16"]
    )
    with caplog.at_level("INFO"):
        plan = plan_devices(spec.train, cuda_available=False)
    assert plan.accelerator == "cpu" and plan.world_size == 1 and plan.precision == "bf16-mixed"
    assert "No GPU found" in caplog.text
    gpu = plan_devices(spec.train, cuda_available=True)
    assert (
        gpu.accelerator == "gpu" and gpu.devices == [0, 1] and gpu.strategy == "ddp" and gpu.world_size == 2
    )


def test_automl_policy_on_routes_train_to_the_search(tiny_spec_args: list[str]) -> None:
    args = [
        *tiny_spec_args,
        "automl_policy=on",
        "automl.max_recommendations=1",
        "automl.max_epochs=1",
        "automl.algorithm=random",
    ]
    result = train.run(load_spec(None, args))
    automl_dir = _train_dir(args).parent / "automl"
    assert (automl_dir / "leaderboard.csv").is_file() and (automl_dir / "best_spec.yaml").is_file()
    assert (automl_dir / "trial_000" / "train" / "dd_model_latest.pth").exists()
    assert not (_train_dir(args) / "dd_model_latest.pth").exists()  # no plain training happened
    assert isinstance(result, AutomlResult) and result.best_trial is not None
