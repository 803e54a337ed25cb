"""Box conversions and overlaps (src/ddetr/model/boxes.py)."""

from __future__ import annotations

import pytest
import torch

from ddetr.model.boxes import (
    BoxFormat,
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    generalized_box_iou,
)


def random_xyxy(n: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 0.7
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.01
    return torch.cat([xy, xy + wh], dim=-1) * scale


def test_box_format_values() -> None:
    assert {f.value for f in BoxFormat} == {"xyxy", "cxcywh", "xywh"}


def test_cxcywh_to_xyxy_by_hand() -> None:
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    expected = torch.tensor([[0.4, 0.1, 0.6, 0.7]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(boxes), expected)
    torch.testing.assert_close(box_xyxy_to_cxcywh(expected), boxes)


def test_xywh_to_xyxy_by_hand() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    expected = torch.tensor([[10.0, 20.0, 40.0, 60.0]])
    torch.testing.assert_close(box_xywh_to_xyxy(boxes), expected)
    torch.testing.assert_close(box_xyxy_to_xywh(expected), boxes)


@pytest.mark.parametrize("shape", [(7, 4), (2, 3, 4), (0, 4)])
def test_conversions_round_trip(shape: tuple[int, ...]) -> None:
    xyxy = random_xyxy(torch.Size(shape[:-1]).numel()).reshape(shape)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy)
    torch.testing.assert_close(box_xywh_to_xyxy(box_xyxy_to_xywh(xyxy)), xyxy)
    cxcywh = box_xyxy_to_cxcywh(xyxy)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(cxcywh)), cxcywh)
    assert box_cxcywh_to_xyxy(cxcywh).shape == torch.Size(shape)


def test_box_area_by_hand_and_integer_input() -> None:
    boxes = torch.tensor([[0, 0, 2, 3], [1, 1, 4, 5]])
    area = box_area(boxes)
    assert area.is_floating_point()
    torch.testing.assert_close(area, torch.tensor([6.0, 12.0]))


def test_iou_and_giou_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 2.0]])
    # overlap 1, union 4 + 4 - 1 = 7, enclosing 3 x 3 = 9; identical; b inside a with half the area
    expected_iou = torch.tensor([[1 / 7, 1.0, 0.5]])
    expected_giou = torch.tensor([[1 / 7 - (9 - 7) / 9, 1.0, 0.5]])
    torch.testing.assert_close(box_iou(a, b), expected_iou)
    torch.testing.assert_close(generalized_box_iou(a, b), expected_giou)


def test_disjoint_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 2.0, 3.0, 3.0], [1.0, 0.0, 2.0, 1.0]])  # apart; touching along an edge
    iou = box_iou(a, b)
    assert torch.equal(iou, torch.zeros(1, 2))
    # union 2, enclosing 9 (apart) and 2 (touching)
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[-7 / 9, 0.0]]))


def test_pairwise_shapes_and_ranges() -> None:
    boxes1, boxes2 = random_xyxy(5, seed=1), random_xyxy(3, seed=2)
    iou, giou = box_iou(boxes1, boxes2), generalized_box_iou(boxes1, boxes2)
    assert iou.shape == giou.shape == (5, 3)
    assert ((iou >= 0) & (iou <= 1)).all()
    assert ((giou >= -1) & (giou <= 1)).all()
    assert (giou <= iou + 1e-6).all()
    torch.testing.assert_close(torch.diag(box_iou(boxes1, boxes1)), torch.ones(5))


def test_fp16_pixels_do_not_overflow() -> None:
    # areas of ~1000 px boxes (1e6) exceed fp16's 65504
    boxes1 = random_xyxy(4, seed=3, scale=2000.0)
    boxes2 = random_xyxy(6, seed=4, scale=2000.0)
    half1, half2 = boxes1.half(), boxes2.half()
    assert box_area(half1).max() > 65504
    for fn in (box_iou, generalized_box_iou):
        result = fn(half1, half2)
        assert torch.isfinite(result).all()
        reference = fn(half1.float(), half2.float())  # same rounded corners, computed in fp32
        torch.testing.assert_close(result.float(), reference, atol=1e-3, rtol=1e-3)
