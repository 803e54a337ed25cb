"""The grid_sample MSDA reference against a direct bilinear loop, precision handling, and the module."""

from __future__ import annotations

import math

import pytest
import torch

import ddetr.model.msda as msda
from ddetr.model.msda import (
    MSDeformAttn,
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_gather,
)

SHAPES = [(3, 5), (2, 3), (1, 1), (4, 2)]


def _bilinear(value_l: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """value_l (H_l, W_l, D) at normalised (x, y), align_corners=False, zeros outside."""
    height, width, _ = value_l.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(value_l.shape[-1], dtype=torch.float64)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                out += wy * wx * value_l[yy, xx].double()
    return out


def _loop_reference(value, shapes, locations, weights) -> torch.Tensor:
    batch, _, heads, dim = value.shape
    _, queries, _, _, points, _ = locations.shape
    out = torch.zeros(batch, queries, heads * dim, dtype=torch.float64)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for b in range(batch):
        for q in range(queries):
            for head in range(heads):
                acc = torch.zeros(dim, dtype=torch.float64)
                for level, (h, w) in enumerate(shapes):
                    value_l = value[b, starts[level] : starts[level + 1], head].reshape(h, w, dim)
                    for p in range(points):
                        x, y = locations[b, q, head, level, p].tolist()
                        acc += weights[b, q, head, level, p].double() * _bilinear(value_l, x, y)
                out[b, q, head * dim : (head + 1) * dim] = acc
    return out


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    batch, heads, dim, queries, points = 2, 2, 3, 4, 3
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, tokens, heads, dim, generator=generator)
    # include points outside [0, 1]: they must read zeros beyond the border
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=generator) * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=generator)
    return value.to(dtype), locations.to(dtype), weights.to(dtype)


def test_reference_equals_direct_bilinear_loop() -> None:
    value, locations, weights = _inputs()
    shapes = torch.tensor(SHAPES, dtype=torch.long)
    actual = multi_scale_deformable_attention(value, shapes, locations, weights)
    expected = _loop_reference(value, SHAPES, locations, weights)
    assert actual.shape == (2, 4, 6)
    assert torch.allclose(actual.double(), expected, atol=1e-5)


def test_spatial_shapes_as_list_or_tensor() -> None:
    value, locations, weights = _inputs(1)
    from_tensor = multi_scale_deformable_attention(value, torch.tensor(SHAPES), locations, weights)
    from_list = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert torch.equal(from_tensor, from_list)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_computed_in_fp32(dtype: torch.dtype) -> None:
    value, locations, weights = _inputs(2, dtype)
    actual = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    expected = multi_scale_deformable_attention(value.float(), SHAPES, locations.float(), weights.float()).to(
        dtype
    )
    assert actual.dtype == dtype
    assert torch.equal(actual, expected)


def test_autocast_runs_the_sampling_in_fp32() -> None:
    value, locations, weights = _inputs(3)
    expected = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert actual.dtype == torch.float32
    assert torch.equal(actual, expected)


def test_module_initialisation_matches_original() -> None:
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points right, head 1 down (after max-normalisation), point i at distance i + 1
    assert torch.allclose(bias[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(bias[1, 0, 2], torch.tensor([0.0, 3.0]), atol=1e-6)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.value_proj.bias) == 0


def _module_inputs(coords: int):
    generator = torch.Generator().manual_seed(4)
    shapes = torch.tensor([(4, 5), (2, 3)])
    tokens = 26
    query = torch.randn(2, 7, 32, generator=generator)
    source = torch.randn(2, tokens, 32, generator=generator)
    reference = torch.rand(2, 7, 2, coords, generator=generator)
    return query, reference, source, shapes


def test_padded_values_do_not_matter() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.1)
    query, reference, source, shapes = _module_inputs(2)
    padding = torch.zeros(2, 26, dtype=torch.bool)
    padding[1, 15:20] = True
    other = source.clone()
    other[1, 15:20] = 100.0
    out = attn(query, reference, source, shapes, input_padding_mask=padding)
    out_other = attn(query, reference, other, shapes, input_padding_mask=padding)
    unmasked = attn(query, reference, other, shapes)
    assert torch.allclose(out, out_other, atol=1e-6)
    assert not torch.allclose(out, unmasked, atol=1e-3)


def test_box_reference_points_scale_offsets() -> None:
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    query, reference, source, shapes = _module_inputs(4)
    assert attn(query, reference, source, shapes).shape == (2, 7, 32)
    with pytest.raises(ValueError, match="2 or 4"):
        attn(query, reference[..., :3], source, shapes)


def test_gather_equals_direct_bilinear_loop_and_reference() -> None:
    value, locations, weights = _inputs(5)
    # exact pixel centres, borders and far-outside points (every corner outside reads zero)
    locations[0, 0, 0, 0, 0] = torch.tensor([0.5 / 5, 0.5 / 3])
    locations[0, 0, 1, 1, 0] = torch.tensor([0.0, 1.0])
    locations[1, 1, 0, 3, 1] = torch.tensor([-7.0, 0.5])
    locations[1, 2, 1, 0, 2] = torch.tensor([0.5, 25.0])
    actual = multi_scale_deformable_attention_gather(value, torch.tensor(SHAPES), locations, weights)
    expected = _loop_reference(value, SHAPES, locations, weights)
    assert actual.shape == (2, 4, 6)
    assert torch.allclose(actual.double(), expected, atol=1e-5)
    reference = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert torch.allclose(actual, reference, atol=1e-5)


def test_gather_equals_reference_on_a_realistic_size_in_float64() -> None:
    generator = torch.Generator().manual_seed(6)
    shapes = [(16, 20), (8, 10), (4, 5), (2, 3)]
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(2, tokens, 8, 4, generator=generator, dtype=torch.float64)
    locations = torch.rand(2, 50, 8, 4, 4, 2, generator=generator, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(2, 50, 8, 4, 4, generator=generator, dtype=torch.float64)
    actual = multi_scale_deformable_attention_gather(value, shapes, locations, weights)
    expected = multi_scale_deformable_attention(value, shapes, locations, weights)
    assert actual.dtype == torch.float64
    assert torch.allclose(actual, expected, atol=1e-12)


@pytest.mark.parametrize("int32_rows", [2**31, 0])
def test_gather_row_numbers_in_int32_or_int64_agree(monkeypatch, int32_rows: int) -> None:
    """Row numbers are int32 unless the table has 2**31 rows or more (forced here with a lower limit)."""
    from ddetr.model import msda

    monkeypatch.setattr(msda, "INT32_ROWS", int32_rows)
    value, locations, weights = _inputs(8)
    actual = multi_scale_deformable_attention_gather(value, SHAPES, locations, weights)
    assert torch.allclose(
        actual, multi_scale_deformable_attention(value, SHAPES, locations, weights), atol=1e-5
    )


def test_gather_survives_non_finite_locations() -> None:
    value, locations, weights = _inputs(7)
    locations[0, 0, 0, 0, 0, 0] = float("nan")
    locations[0, 1, 0, 0, 0, 1] = float("inf")
    locations[1, 0, 0, 0, 0, 0] = -float("inf")
    out = multi_scale_deformable_attention_gather(value, SHAPES, locations, weights)
    assert torch.isfinite(out).all()
    reference = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert torch.allclose(out[1, 1:], reference[1, 1:], atol=1e-5)


def _spy(monkeypatch) -> list[str]:
    calls: list[str] = []
    for name in ("multi_scale_deformable_attention", "multi_scale_deformable_attention_gather"):
        original = getattr(msda, name)

        def wrapped(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(msda, name, wrapped)
    return calls


def _trained_module() -> MSDeformAttn:
    torch.manual_seed(1)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.3)
        attn.attention_weights.weight.normal_(0, 0.3)
    return attn


def test_module_uses_gather_without_grad_and_reference_with_grad(monkeypatch) -> None:
    calls = _spy(monkeypatch)
    attn = _trained_module()
    query, reference, source, shapes = _module_inputs(4)
    with torch.no_grad():
        fast = attn(query, reference, source, shapes)
    assert calls == ["multi_scale_deformable_attention_gather"]
    slow = attn(query, reference, source, shapes)
    assert calls[-1] == "multi_scale_deformable_attention"
    assert slow.requires_grad
    assert torch.allclose(fast, slow, atol=1e-5)
    slow.sum().backward()
    assert attn.sampling_offsets.weight.grad is not None


def test_module_uses_the_reference_while_tracing(monkeypatch) -> None:
    calls = _spy(monkeypatch)
    attn = _trained_module().eval()
    query, reference, source, shapes = _module_inputs(2)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attn

        def forward(self, q: torch.Tensor, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return self.attn(q, r, s, shapes, [(4, 5), (2, 3)])

    with torch.no_grad():
        torch.jit.trace(Wrapper(), (query, reference, source), check_trace=False)
    assert calls and set(calls) == {"multi_scale_deformable_attention"}


def test_recomputed_samples_give_the_same_gradients() -> None:
    attn = _trained_module()
    query, reference, source, shapes = _module_inputs(2)
    source.requires_grad_(True)
    grads = []
    for recompute in (True, False):
        attn.recompute_samples = recompute
        attn.zero_grad(set_to_none=True)
        source.grad = None
        attn(query, reference, source, shapes).square().sum().backward()
        grads.append(
            (attn.sampling_offsets.weight.grad.clone(), attn.value_proj.weight.grad.clone(), source.grad)
        )
    for recomputed, kept in zip(*grads):
        assert recomputed.abs().max() > 0
        assert torch.allclose(recomputed, kept, atol=1e-6)
