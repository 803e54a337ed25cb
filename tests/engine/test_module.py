"""Parameter groups, optimizers and schedulers of the LightningModule."""

from __future__ import annotations

import pytest
import torch

from ddetr.engine.module import DetectionModule, parameter_groups
from ddetr.model.detector import DeformableDETR
from ddetr.spec.load import load_spec


@pytest.fixture()
def model() -> DeformableDETR:
    spec = load_spec(
        None,
        [
            "model.backbone=resnet_18",
            "model.hidden_dim=32",
            "model.nheads=2",
            "model.enc_layers=1",
            "model.dec_layers=1",
            "model.num_queries=10",
            "model.num_select=10",
            "dataset.num_classes=3",
        ],
    )
    return DeformableDETR.from_config(spec.model, 3)


def test_parameter_groups_learning_rates(model: DeformableDETR) -> None:
    groups = {
        g["name"]: g for g in parameter_groups(model, lr=1e-4, lr_backbone=1e-5, lr_linear_proj_mult=0.1)
    }
    assert groups["main"]["lr"] == 1e-4 and groups["backbone"]["lr"] == 1e-5
    assert groups["linear_proj"]["lr"] == pytest.approx(1e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("backbone.") for p in groups["backbone"]["params"])
    assert all(
        "sampling_offsets" in names[id(p)] or "reference_points" in names[id(p)]
        for p in groups["linear_proj"]["params"]
    )
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == trainable
    # frozen stem and layer1 stay out of every group
    frozen = {id(p) for n, p in model.named_parameters() if n.startswith("backbone.body.layer1.")}
    assert not frozen & {id(p) for g in groups.values() for p in g["params"]}


@pytest.mark.parametrize(
    ("optimizer", "scheduler", "opt_cls", "sched_cls"),
    [
        ("AdamW", "MultiStep", torch.optim.AdamW, torch.optim.lr_scheduler.MultiStepLR),
        ("SGD", "StepLR", torch.optim.SGD, torch.optim.lr_scheduler.StepLR),
    ],
)
def test_configure_optimizers(model, optimizer, scheduler, opt_cls, sched_cls) -> None:
    spec = load_spec(
        None,
        [
            f"train.optim.optimizer={optimizer}",
            f"train.optim.lr_scheduler={scheduler}",
            "train.optim.lr_steps=[3, 5]",
            "train.optim.lr_step_size=2",
            "train.optim.lr_decay=0.5",
        ],
    )
    config = DetectionModule(model, spec).configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(opt, opt_cls) and isinstance(sched, sched_cls)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    base = spec.train.optim.lr
    if scheduler == "MultiStep":
        assert lrs == pytest.approx([base, base, base, base * 0.5, base * 0.5, base * 0.25])
    else:
        assert lrs == pytest.approx([base, base, base * 0.5, base * 0.5, base * 0.25, base * 0.25])
