"""model.dropout.Dropout: nn.Dropout's behaviour with a cheaper CPU mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddetr.model.dropout import Dropout, drop_mask, effective_p


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_drops_the_requested_fraction_and_keeps_the_mean(p: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(400, 1000) + 1.0
    out = Dropout(p).train()(x)
    dropped = out == 0
    # 400,000 elements: the binomial standard deviation of the fraction is <= 0.0008
    assert abs(dropped.float().mean().item() - p) < 0.004
    assert effective_p(p) == pytest.approx(p, abs=1 / 32768)
    kept = ~dropped
    assert torch.allclose(out[kept], x[kept] / (1 - effective_p(p)))
    assert out.mean().item() == pytest.approx(x.mean().item(), rel=0.01)


def test_the_mask_is_uniform_in_every_lane() -> None:
    """Each 64-bit word gives four numbers; the fourth has the word's always-zero top bit, which the 15-bit mask
    removes: every lane must drop the same fraction (a 16-bit compare would drop twice as often in lane 3)."""
    torch.manual_seed(1)
    mask = drop_mask((4 * 100_000,), 0.25).view(-1, 4).float().mean(0)
    assert torch.all((mask - 0.25).abs() < 0.01), mask


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 300, requires_grad=True)
    out = Dropout(0.2).train()(x)
    out.backward(torch.ones_like(out))
    expected = (out.detach() != 0).float() / (1 - effective_p(0.2))
    assert torch.equal(x.grad, expected)


def test_seeded_runs_repeat_and_differ_between_seeds() -> None:
    layer = Dropout(0.1).train()
    x = torch.ones(50, 50)
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    again = layer(x)
    torch.manual_seed(4)
    other = layer(x)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_evaluation_and_edge_probabilities_behave_as_nn_dropout() -> None:
    x = torch.randn(10, 10)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert isinstance(Dropout(0.1), nn.Dropout) and not list(Dropout(0.1).parameters())


def test_the_transformer_uses_it() -> None:
    from ddetr.model.transformer import DeformableTransformerEncoderLayer

    layer = DeformableTransformerEncoderLayer(
        d_model=32, d_ffn=64, dropout=0.1, n_levels=1, n_heads=2, n_points=2
    )
    assert all(isinstance(m, Dropout) for m in layer.modules() if isinstance(m, nn.Dropout))
    assert any(isinstance(m, Dropout) for m in layer.modules())
