"""train.activation_checkpoint: transformer layers recomputed in the backward pass, same loss and gradients."""

from __future__ import annotations

import pytest
import torch

from ddetr.model.detector import DeformableDETR
from ddetr.spec.sections import ModelSection

SECTION = ModelSection(
    backbone="timm:test_resnet",
    hidden_dim=32,
    nheads=2,
    enc_layers=2,
    dec_layers=2,
    dim_feedforward=64,
    num_queries=10,
    num_select=10,
    num_feature_levels=2,
    return_interm_indices=[2, 3],
    with_box_refine=True,
    dropout_ratio=0.1,  # dropout on: the recomputation must draw the same masks
)


def _step(model: DeformableDETR, recompute: bool) -> tuple[float, dict[str, torch.Tensor], int, int]:
    """One forward/backward; returns the loss, the gradients and the tensors (count, bytes) kept for backward."""
    model.transformer.set_activation_checkpoint(recompute)
    model.zero_grad()
    saved = [0, 0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += 1
        saved[1] += tensor.numel() * tensor.element_size()
        return tensor

    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(images)
        loss = out.pred_logits.sigmoid().sum() + out.pred_boxes.sum()
        loss = loss + sum(aux.pred_boxes.sum() for aux in out.aux_outputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, saved[0], saved[1]


def test_same_loss_and_gradients_with_fewer_saved_activations() -> None:
    torch.manual_seed(0)
    model = DeformableDETR.from_config(SECTION, 3).train()
    loss, grads, count, size = _step(model, recompute=False)
    loss_ckpt, grads_ckpt, count_ckpt, size_ckpt = _step(model, recompute=True)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6, abs=1e-6)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 100
    worst = max((grads[k] - grads_ckpt[k]).abs().max().item() for k in grads)
    assert worst <= 1e-6
    # the layers' inner activations are not kept: far fewer tensors, fewer bytes held for the backward pass
    assert count_ckpt < 0.7 * count and size_ckpt < size


def test_no_recomputation_in_eval_or_without_grad() -> None:
    model = DeformableDETR.from_config(SECTION, 3).eval()
    model.transformer.set_activation_checkpoint(True)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        checkpointed = model(images).pred_boxes
    model.transformer.set_activation_checkpoint(False)
    with torch.no_grad():
        plain = model(images).pred_boxes
    assert torch.equal(checkpointed, plain)


def test_training_module_applies_the_spec_flag() -> None:
    from ddetr.engine.module import DetectionModule
    from ddetr.spec.load import load_spec

    for value in (True, False):
        spec = load_spec(None, [f"train.activation_checkpoint={str(value).lower()}"])
        model = DeformableDETR.from_config(SECTION, 3)
        DetectionModule(model, spec)
        assert model.transformer.encoder.activation_checkpoint is value
        assert model.transformer.decoder.activation_checkpoint is value


def test_the_switch_also_decides_whether_attention_samples_are_recomputed(monkeypatch) -> None:
    """activation_checkpoint false keeps the deformable attention's samples (the fastest step); true samples
    them again in the backward pass. Counted by the calls of the sampling function during one step."""
    from ddetr.model import msda

    calls = [0]
    reference = msda.multi_scale_deformable_attention

    def counting(*args: object) -> torch.Tensor:
        calls[0] += 1
        return reference(*args)

    monkeypatch.setattr(msda, "multi_scale_deformable_attention", counting)
    torch.manual_seed(0)
    model = DeformableDETR.from_config(SECTION, 3).train()
    attention_modules = [m for m in model.modules() if isinstance(m, msda.MSDeformAttn)]
    counts = {}
    for recompute in (False, True):
        model.transformer.set_activation_checkpoint(recompute)
        assert {m.recompute_samples for m in attention_modules} == {recompute}
        calls[0] = 0
        _, grads, _, _ = _step(model, recompute)
        assert grads
        counts[recompute] = calls[0]
    # 4 attention modules (2 encoder + 2 decoder layers): once each when kept; with recomputation each runs
    # in the forward pass, again when its layer is recomputed, and once more for its samples' backward
    assert counts[False] == len(attention_modules) == 4
    assert counts[True] == 3 * len(attention_modules)
