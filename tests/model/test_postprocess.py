"""Top-k post-processing to pixel boxes."""

from __future__ import annotations

import torch

from ddetr.model.postprocess import postprocess


def test_topk_over_queries_and_classes() -> None:
    logits = torch.full((2, 3, 4), -10.0)
    logits[0, 2, 1] = 5.0  # best: query 2, class 1
    logits[0, 0, 3] = 3.0  # second: query 0, class 3
    logits[1, 1, 0] = 1.0
    boxes = torch.tensor(
        [
            [[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]],
            [[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1]],
        ]
    )
    sizes = torch.tensor([[100, 200], [50, 80]])  # (h, w)
    results = postprocess(logits, boxes, sizes, num_select=2)
    assert len(results) == 2
    first = results[0]
    assert first["labels"].tolist() == [1, 3]
    assert first["labels"].dtype == torch.long
    assert torch.allclose(first["scores"], torch.sigmoid(torch.tensor([5.0, 3.0])))
    # query 2: cx .25 cy .75 w .5 h .5 -> x 0..0.5, y 0.5..1 -> pixels (w 200, h 100)
    assert torch.allclose(first["boxes"][0], torch.tensor([0.0, 50.0, 100.0, 100.0]))
    assert torch.allclose(first["boxes"][1], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    second = results[1]
    assert second["labels"][0].item() == 0
    assert torch.allclose(second["boxes"][0], torch.tensor([20.0, 12.5, 60.0, 37.5]))
    assert second["scores"].shape == (2,) and second["boxes"].shape == (2, 4)
