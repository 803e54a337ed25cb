"""Training criterion (src/ddetr/model/criterion.py), including parity with Hugging Face's Deformable DETR loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

import ddetr.model.criterion as criterion_module
from ddetr.errors import DataError
from ddetr.model.criterion import SetCriterion, build_criterion, build_weight_dict, global_num_boxes
from ddetr.model.matcher import HungarianMatcher
from ddetr.model.outputs import DetectionOutput, LayerPrediction
from ddetr.spec.sections import ModelSection

NUM_CLASSES = 6


def random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 4) normalised cxcywh well inside the image."""
    centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([centre, size], dim=-1)


def random_targets(counts: list[int], g: torch.Generator) -> list[dict[str, torch.Tensor]]:
    return [
        {"labels": torch.randint(1, NUM_CLASSES, (n,), generator=g), "boxes": random_boxes(n, g)}
        for n in counts
    ]


def random_layers(
    num_layers: int, batch: int, queries: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked per-layer logits (L, B, Q, C) and boxes (L, B, Q, 4), leaf tensors requiring grad."""
    logits = (torch.randn(num_layers, batch, queries, NUM_CLASSES, generator=g) * 2).requires_grad_()
    boxes = (
        random_boxes(num_layers * batch * queries, g).reshape(num_layers, batch, queries, 4).requires_grad_()
    )
    return logits, boxes


def as_output(logits: torch.Tensor, boxes: torch.Tensor) -> DetectionOutput:
    aux = [LayerPrediction(logits[i], boxes[i]) for i in range(logits.shape[0] - 1)]
    return DetectionOutput(pred_logits=logits[-1], pred_boxes=boxes[-1], aux_outputs=aux)


def hf_loss(logits, boxes, targets, class_cost, bbox_cost, giou_cost, focal_alpha=0.25):
    config = SimpleNamespace(
        class_cost=class_cost,
        bbox_cost=bbox_cost,
        giou_cost=giou_cost,
        num_labels=NUM_CLASSES,
        focal_alpha=focal_alpha,
        auxiliary_loss=True,
        bbox_loss_coefficient=bbox_cost,
        giou_loss_coefficient=giou_cost,
        decoder_layers=logits.shape[0],
    )
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    total, loss_dict, _ = DeformableDetrForObjectDetectionLoss(
        logits[-1], labels, logits.device, boxes[-1], config, outputs_class=logits, outputs_coord=boxes
    )
    return total, loss_dict


@pytest.mark.parametrize(("costs", "seed"), [((2.0, 5.0, 2.0), 0), ((1.0, 3.0, 4.0), 1)])
def test_parity_with_hugging_face(costs: tuple[float, float, float], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    num_layers, counts = 3, [3, 1, 0, 5]
    logits, boxes = random_layers(num_layers, len(counts), 10, g)
    targets = random_targets(counts, g)
    class_cost, bbox_cost, giou_cost = costs

    hf_total, hf = hf_loss(logits, boxes, targets, *costs)
    model = ModelSection(
        cls_loss_coef=class_cost, bbox_loss_coef=bbox_cost, giou_loss_coef=giou_cost, dec_layers=num_layers
    )
    criterion = build_criterion(model, NUM_CLASSES)
    ours = criterion(as_output(logits, boxes), targets)

    # HF names the components as we do; map explicitly so a renaming on either side fails loudly
    mapping = {
        f"{name}{suffix}": f"{name}{suffix}"
        for suffix in ["", "_0", "_1"]
        for name in criterion_module.LOSS_NAMES
    }
    assert {k for k in ours if k.startswith("loss_")} == set(mapping)
    for our_key, hf_key in mapping.items():
        torch.testing.assert_close(ours[our_key], hf[hf_key], atol=1e-4, rtol=0, msg=our_key)

    # HF weights loss_ce by 1, not by its class cost: compare the totals and their gradients with that weighting
    criterion.weight_dict.update({k: 1.0 for k in criterion.weight_dict if k.startswith("loss_ce")})
    total = criterion.weighted_total(ours)
    torch.testing.assert_close(total, hf_total, atol=1e-4, rtol=0)
    hf_grads = torch.autograd.grad(hf_total, [logits, boxes])
    our_grads = torch.autograd.grad(total, [logits, boxes])
    for ours_grad, hf_grad in zip(our_grads, hf_grads):
        torch.testing.assert_close(ours_grad, hf_grad, atol=1e-5, rtol=1e-4)


def test_perfect_predictions() -> None:
    g = torch.Generator().manual_seed(2)
    targets = random_targets([2, 3], g)
    logits = torch.full((2, 6, NUM_CLASSES), -12.0)
    boxes = random_boxes(12, g).reshape(2, 6, 4)
    for b, target in enumerate(targets):
        n = len(target["labels"])
        boxes[b, 1 : 1 + n] = target["boxes"]
        logits[b, torch.arange(1, 1 + n), target["labels"]] = 12.0
    criterion = build_criterion(ModelSection(aux_loss=False), NUM_CLASSES)
    losses = criterion(DetectionOutput(logits, boxes), targets)
    assert losses["loss_bbox"].item() < 1e-6
    assert losses["loss_giou"].item() < 1e-6
    assert losses["loss_ce"].item() < 1e-6
    assert losses["class_error"].item() == 0.0

    shifted = criterion(DetectionOutput(logits, (boxes + 0.05).clamp(0, 1)), targets)
    assert shifted["loss_bbox"].item() > 0.1 and shifted["loss_giou"].item() > 0.01


def test_gradients_reach_every_layer() -> None:
    g = torch.Generator().manual_seed(3)
    logits, boxes = random_layers(3, 2, 7, g)
    criterion = build_criterion(ModelSection(dec_layers=3), NUM_CLASSES)
    losses = criterion(as_output(logits, boxes), random_targets([2, 4], g))
    assert not losses["class_error"].requires_grad
    criterion.weighted_total(losses).backward()
    for grad in (logits.grad, boxes.grad):
        assert torch.isfinite(grad).all()
        assert all(grad[layer].abs().sum() > 0 for layer in range(3))


def test_crowd_boxes_are_ignored() -> None:
    g = torch.Generator().manual_seed(4)
    logits, boxes = random_layers(2, 2, 8, g)
    output = as_output(logits, boxes)
    plain = random_targets([2, 3], g)
    crowd_boxes, crowd_labels = random_boxes(2, g), torch.tensor([1, 2])
    with_crowd = [
        {
            "labels": plain[0]["labels"],
            "boxes": plain[0]["boxes"],
            "iscrowd": torch.zeros(2, dtype=torch.int64),
        },
        {
            "labels": torch.cat([crowd_labels[:1], plain[1]["labels"], crowd_labels[1:]]),
            "boxes": torch.cat([crowd_boxes[:1], plain[1]["boxes"], crowd_boxes[1:]]),
            "iscrowd": torch.tensor([1, 0, 0, 0, 1]),
        },
    ]
    criterion = build_criterion(ModelSection(dec_layers=2), NUM_CLASSES)
    expected, got = criterion(output, plain), criterion(output, with_crowd)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)
    as_objects = [{k: v for k, v in t.items() if k != "iscrowd"} for t in with_crowd]
    assert not torch.allclose(criterion(output, as_objects)["loss_ce"], expected["loss_ce"])


def test_two_stage_encoder_losses_are_class_agnostic() -> None:
    g = torch.Generator().manual_seed(5)
    logits, boxes = random_layers(2, 2, 6, g)
    enc_logits, enc_boxes = random_layers(1, 2, 20, g)
    output = DetectionOutput(
        logits[-1],
        boxes[-1],
        [LayerPrediction(logits[0], boxes[0])],
        LayerPrediction(enc_logits[0], enc_boxes[0]),
    )
    targets = random_targets([3, 2], g)
    criterion = build_criterion(ModelSection(dec_layers=2, two_stage=True), NUM_CLASSES)
    losses = criterion(output, targets)
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(losses)
    assert set(criterion.weight_dict) == {k for k in losses if k.startswith("loss_")}

    agnostic = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
    alone = criterion(DetectionOutput(enc_logits[0], enc_boxes[0]), agnostic)
    for name in criterion_module.LOSS_NAMES:
        torch.testing.assert_close(losses[f"{name}_enc"], alone[name])
    with_labels = criterion(DetectionOutput(enc_logits[0], enc_boxes[0]), targets)
    assert not torch.allclose(with_labels["loss_ce"], alone["loss_ce"])

    criterion.weighted_total(losses).backward()
    assert enc_logits.grad.abs().sum() > 0 and enc_boxes.grad.abs().sum() > 0


def test_no_targets_in_batch() -> None:
    g = torch.Generator().manual_seed(6)
    logits, boxes = random_layers(2, 2, 5, g)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    criterion = build_criterion(ModelSection(dec_layers=2), NUM_CLASSES)
    losses = criterion(as_output(logits, boxes), empty)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou_0"].item() == 0.0
    assert losses["loss_ce"].item() > 0
    total = criterion.weighted_total(losses)
    assert torch.isfinite(total)
    total.backward()
    assert logits.grad.abs().sum() > 0


def test_weight_dict_and_weighted_total() -> None:
    model = ModelSection(dec_layers=3, cls_loss_coef=1.5, bbox_loss_coef=4.0, giou_loss_coef=0.5)
    weights = build_weight_dict(model)
    assert weights["loss_ce"] == 1.5 and weights["loss_bbox_1"] == 4.0 and weights["loss_giou_0"] == 0.5
    assert "loss_ce_2" not in weights and "loss_ce_enc" not in weights
    assert set(build_weight_dict(ModelSection(aux_loss=False))) == {"loss_ce", "loss_bbox", "loss_giou"}

    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(), {"loss_ce": 2.0, "loss_bbox": 3.0})
    losses = {"loss_ce": torch.tensor(1.0), "loss_bbox": torch.tensor(0.5), "class_error": torch.tensor(50.0)}
    assert criterion.weighted_total(losses).item() == pytest.approx(3.5)
    with pytest.raises(KeyError, match="loss_giou"):
        criterion.weighted_total({**losses, "loss_giou": torch.tensor(1.0)})


def test_matcher_uses_spec_coefficients() -> None:
    model = ModelSection(cls_loss_coef=1.5, bbox_loss_coef=4.0, giou_loss_coef=0.5, focal_alpha=0.3)
    matcher = build_criterion(model, NUM_CLASSES).matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou, matcher.focal_alpha) == (
        1.5,
        4.0,
        0.5,
        0.3,
    )


def test_label_outside_num_classes_is_a_data_error() -> None:
    criterion = build_criterion(ModelSection(aux_loss=False), NUM_CLASSES)
    output = DetectionOutput(torch.zeros(1, 3, NUM_CLASSES), torch.full((1, 3, 4), 0.5))
    bad = [{"labels": torch.tensor([NUM_CLASSES]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(DataError, match="num_classes"):
        criterion(output, bad)
    with pytest.raises(ValueError, match="2 targets"):
        criterion(output, bad * 2)


class FakeDist:
    """Two processes: the other one holds ``other`` boxes."""

    def __init__(self, other: float) -> None:
        self.other = other

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def all_reduce(self, tensor: torch.Tensor) -> None:
        tensor += self.other

    def get_world_size(self) -> int:
        return 2


def test_num_boxes_is_averaged_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(7)
    targets = random_targets([3, 1], g)
    assert global_num_boxes(targets, torch.device("cpu")) == 4.0
    monkeypatch.setattr(criterion_module, "dist", FakeDist(other=6.0))
    assert global_num_boxes(targets, torch.device("cpu")) == 5.0
    monkeypatch.setattr(criterion_module, "dist", FakeDist(other=0.0))
    assert global_num_boxes(random_targets([0, 0], g), torch.device("cpu")) == 1.0  # clamped
