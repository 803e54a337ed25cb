"""Hungarian matcher (src/ddetr/model/matcher.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.ops import generalized_box_iou as tv_generalized_box_iou
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher

from ddetr.model.matcher import HungarianMatcher


def random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 4) normalised cxcywh well inside the image."""
    centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([centre, size], dim=-1)


def reference_cost(logits, boxes, labels, target_boxes, weights=(2.0, 5.0, 2.0), alpha=0.25) -> torch.Tensor:
    """Independent (Q, N) cost: loops and torchvision's GIoU."""
    w_class, w_bbox, w_giou = weights
    q, n = logits.shape[0], labels.shape[0]
    cost = torch.zeros(q, n, dtype=torch.float64)
    to_xyxy = lambda b: torch.cat([b[:2] - b[2:] / 2, b[:2] + b[2:] / 2])  # noqa: E731
    for i in range(q):
        for j in range(n):
            p = torch.sigmoid(logits[i, labels[j]].double())
            pos = alpha * (1 - p) ** 2 * -torch.log(p + 1e-8)
            neg = (1 - alpha) * p**2 * -torch.log(1 - p + 1e-8)
            l1 = (boxes[i] - target_boxes[j]).abs().sum().double()
            giou = tv_generalized_box_iou(to_xyxy(boxes[i])[None], to_xyxy(target_boxes[j])[None])[
                0, 0
            ].double()
            cost[i, j] = w_class * (pos - neg) + w_bbox * l1 - w_giou * giou
    return cost


def brute_force_min(cost: torch.Tensor) -> float:
    """Minimum total cost over every one-to-one assignment of min(Q, N) pairs."""
    q, n = cost.shape
    if q >= n:
        return min(
            sum(cost[rows[j], j].item() for j in range(n)) for rows in itertools.permutations(range(q), n)
        )
    return min(sum(cost[i, cols[i]].item() for i in range(q)) for cols in itertools.permutations(range(n), q))


@pytest.mark.parametrize(("num_queries", "num_targets", "seed"), [(5, 3, 0), (6, 6, 1), (3, 5, 2), (6, 1, 3)])
def test_matches_brute_force(num_queries: int, num_targets: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    num_classes = 4
    logits = torch.randn(1, num_queries, num_classes, generator=g) * 2
    boxes = random_boxes(num_queries, g)[None]
    target = {
        "labels": torch.randint(0, num_classes, (num_targets,), generator=g),
        "boxes": random_boxes(num_targets, g),
    }
    ((query_idx, target_idx),) = HungarianMatcher()(logits, boxes, [target])

    assert query_idx.dtype == target_idx.dtype == torch.int64
    assert len(query_idx) == len(target_idx) == min(num_queries, num_targets)
    assert len(set(query_idx.tolist())) == len(query_idx) and len(set(target_idx.tolist())) == len(target_idx)
    cost = reference_cost(logits[0], boxes[0], target["labels"], target["boxes"])
    found = cost[query_idx, target_idx].sum().item()
    assert found == pytest.approx(brute_force_min(cost), abs=1e-5)


def test_cost_matrix_matches_reference_with_custom_weights() -> None:
    g = torch.Generator().manual_seed(5)
    logits, boxes = torch.randn(4, 3, generator=g) * 3, random_boxes(4, g)
    labels, target_boxes = torch.tensor([2, 0]), random_boxes(2, g)
    matcher = HungarianMatcher(cost_class=1.5, cost_bbox=3.0, cost_giou=0.5, focal_alpha=0.4)
    cost = matcher.cost_matrix(logits, boxes, labels, target_boxes)
    expected = reference_cost(logits, boxes, labels, target_boxes, weights=(1.5, 3.0, 0.5), alpha=0.4)
    torch.testing.assert_close(cost.double(), expected, atol=1e-5, rtol=1e-5)


def test_obvious_assignment() -> None:
    # each target sits exactly on one query and that query is confident of the target's class
    target_boxes = torch.tensor([[0.2, 0.3, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2], [0.9, 0.9, 0.1, 0.1], [0.2, 0.3, 0.1, 0.1]]]
    )
    logits = torch.full((1, 4, 3), -5.0)
    logits[0, 1, 2] = logits[0, 3, 1] = 5.0
    ((query_idx, target_idx),) = HungarianMatcher()(
        logits, boxes, [{"labels": torch.tensor([1, 2]), "boxes": target_boxes}]
    )
    assert dict(zip(query_idx.tolist(), target_idx.tolist())) == {1: 1, 3: 0}
    assert query_idx.tolist() == sorted(query_idx.tolist())


def test_empty_targets() -> None:
    g = torch.Generator().manual_seed(7)
    logits, boxes = torch.randn(3, 5, 4, generator=g), random_boxes(15, g).reshape(3, 5, 4)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    some = {"labels": torch.tensor([1, 3]), "boxes": random_boxes(2, g)}
    indices = HungarianMatcher()(logits, boxes, [empty, some, empty])
    assert [len(q) for q, _ in indices] == [0, 2, 0]
    assert all(q.dtype == t.dtype == torch.int64 for q, t in indices)

    indices = HungarianMatcher()(logits, boxes, [empty, empty, empty])  # no target in the whole batch
    assert [(len(q), len(t)) for q, t in indices] == [(0, 0)] * 3


def test_non_finite_predictions_do_not_crash() -> None:
    g = torch.Generator().manual_seed(8)
    logits, boxes = torch.randn(1, 4, 2, generator=g), random_boxes(4, g)[None]
    boxes[0, 0] = float("nan")
    target = {"labels": torch.tensor([0, 1]), "boxes": random_boxes(2, g)}
    ((query_idx, _),) = HungarianMatcher()(logits, boxes, [target])
    assert len(query_idx) == 2
    assert 0 not in query_idx.tolist()  # the NaN query is matched only if nothing else is left


def test_no_gradient_graph() -> None:
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(1, 3, 2, generator=g, requires_grad=True)
    boxes = random_boxes(3, g)[None].requires_grad_()
    ((query_idx, _),) = HungarianMatcher()(
        logits, boxes, [{"labels": torch.tensor([1]), "boxes": random_boxes(1, g)}]
    )
    assert not query_idx.requires_grad
    assert logits.grad is None


@pytest.mark.parametrize("weights", [(0.0, 0.0, 0.0), (-1.0, 5.0, 2.0)])
def test_invalid_weights(weights: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="HungarianMatcher"):
        HungarianMatcher(*weights)


def test_agrees_with_hugging_face_matcher() -> None:
    g = torch.Generator().manual_seed(11)
    batch, queries, classes = 3, 8, 5
    logits, boxes = torch.randn(batch, queries, classes, generator=g), random_boxes(batch * queries, g)
    boxes = boxes.reshape(batch, queries, 4)
    targets = [
        {"labels": torch.randint(0, classes, (n,), generator=g), "boxes": random_boxes(n, g)}
        for n in (4, 0, 2)
    ]
    ours = HungarianMatcher(2.0, 5.0, 2.0)(logits, boxes, targets)
    hf = DeformableDetrHungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0)(
        {"logits": logits, "pred_boxes": boxes},
        [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets],
    )
    for (q, t), (hq, ht) in zip(ours, hf):
        assert q.tolist() == hq.tolist() and t.tolist() == ht.tolist()
