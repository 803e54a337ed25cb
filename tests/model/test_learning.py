"""The model can learn: a fixed tiny batch, 20 optimizer steps on CPU, the loss goes down."""

from __future__ import annotations

import pytest
import torch

from ddetr.model.criterion import build_criterion
from ddetr.model.detector import DeformableDETR
from ddetr.spec.sections import ModelSection


@pytest.mark.slow  # ~35 s on 2 cores; the demo test checks learning end to end too
def test_twenty_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    section = ModelSection(
        backbone="resnet_18",
        hidden_dim=32,
        nheads=2,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=64,
        num_queries=10,
        num_select=10,
        num_feature_levels=2,
        return_interm_indices=[2, 3],
        dropout_ratio=0.0,
    )
    model = DeformableDETR.from_config(section, num_classes=3)
    criterion = build_criterion(section, 3)
    images = torch.randn(2, 3, 96, 80)
    mask = torch.zeros(2, 96, 80, dtype=torch.bool)
    mask[1, :, 64:] = True  # second image is 96x64, padded
    targets = [
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    model.train()
    for _ in range(20):
        total = criterion.weighted_total(criterion(model(images, mask), targets))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(total))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
