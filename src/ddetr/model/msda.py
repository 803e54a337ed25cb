"""Multi-scale deformable attention (MSDA): the pure-PyTorch reference function and the module.

Symbols: B batch, Lq queries, S value tokens (sum of H_l * W_l), H heads, D_h channels per head,
L feature levels, P sampling points per level and head.

:func:`multi_scale_deformable_attention` is the reference: any faster path must match it in a test.
:func:`multi_scale_deformable_attention_gather` is the same sum computed as one weighted gather
(``F.embedding_bag``): about twice as fast on CPU and without the (B*H, D_h, Lq, P) temporaries, but its
backward is slow, so :class:`MSDeformAttn` uses it only when no gradient is needed and not while exporting.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

_LOW_PRECISION = (torch.float16, torch.bfloat16)

SpatialShapes = Tensor | Sequence[tuple[int, int]]

#: the gather path numbers its table rows in int32 below this many rows, else in int64
INT32_ROWS = 2**31


def _shape_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]


def _sample(
    value: Tensor, shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    value_levels = value.split([height * width for height, width in shapes], dim=1)
    # level-major layouts so each level's grid and weights are contiguous (grid_sample is slow on strided grids)
    grids = (2 * sampling_locations - 1).permute(0, 2, 3, 1, 4, 5)  # (B, H, L, Lq, P, 2), in [-1, 1]
    grids = grids.reshape(batch * heads, levels, num_queries, points, 2)  # (B*H, L, Lq, P, 2)
    weights = attention_weights.permute(0, 2, 3, 1, 4).reshape(batch * heads, levels, 1, num_queries, points)
    output: Tensor | None = None
    for level, (height, width) in enumerate(shapes):
        # (B, H_l*W_l, H, D_h) -> (B, H, D_h, H_l*W_l) -> (B*H, D_h, H_l, W_l): one contiguous copy per level
        value_l = (
            value_levels[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        )
        sampled = F.grid_sample(
            value_l, grids[:, level], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B*H, D_h, Lq, P)
        weighted = (sampled * weights[:, level]).sum(-1)  # (B*H, D_h, Lq)
        output = weighted if output is None else output + weighted
    if output is None:
        raise ValueError("spatial_shapes is empty: at least one feature level is needed")
    # (B*H, D_h, Lq) -> (B, H*D_h, Lq) -> (B, Lq, H*D_h)
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2).contiguous()


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Bilinearly sample every level at the given locations and sum with the attention weights.

    Args:
        value: (B, S, H, D_h) values of all levels, flattened level by level (row-major in each level).
        spatial_shapes: (L, 2) long tensor or a sequence of (H_l, W_l) ints; sum of H_l * W_l must be S.
        sampling_locations: (B, Lq, H, L, P, 2) normalised (x, y) in [0, 1] of each level (outside
            locations read zeros; (0, 0) is the top-left corner of the top-left pixel).
        attention_weights: (B, Lq, H, L, P) weights (softmax over L * P in the module).

    Returns:
        (B, Lq, H * D_h), in ``value``'s dtype. Half and bfloat16 inputs (or autocast) are computed in
        float32 and cast back, since grid_sample's interpolation in low precision drifts.
    """
    shapes = _shape_list(spatial_shapes)
    device_type = value.device.type
    low_precision = value.dtype in _LOW_PRECISION or (
        torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) in _LOW_PRECISION
    )
    if not low_precision:
        return _sample(value, shapes, sampling_locations, attention_weights)
    out_dtype = value.dtype
    with torch.autocast(device_type=device_type, enabled=False):
        output = _sample(value.float(), shapes, sampling_locations.float(), attention_weights.float())
    return output.to(out_dtype)


def multi_scale_deformable_attention_gather(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The reference's result as one weighted gather over the four bilinear corners of every point.

    Same arguments, shapes and result as :func:`multi_scale_deformable_attention` (float32/float64 only).
    Each level gets a zero border (1 pixel before, 2 after) so that every corner of a location clamped to
    [-1, size] is a valid row reading zero outside the level: corners outside the level contribute nothing,
    as with grid_sample's zero padding. The bilinear weights times the attention weights are the
    ``per_sample_weights`` of a sum-mode ``embedding_bag`` whose table is the padded value, one bag of
    L * P * 4 rows per (batch, query, head), so no (B*H, D_h, Lq, P) sample tensor is ever built.
    """
    shapes = _shape_list(spatial_shapes)
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    if not shapes:
        raise ValueError("spatial_shapes is empty: at least one feature level is needed")
    device, dtype = value.device, sampling_locations.dtype
    value_levels = value.split([height * width for height, width in shapes], dim=1)
    padded = [
        # (B, H_l*W_l, H, D_h) -> (B, H_l + 3, W_l + 3, H*D_h) -> (B, (H_l + 3) * (W_l + 3), H*D_h)
        F.pad(level.reshape(batch, height, width, heads * head_dim), (0, 0, 1, 2, 1, 2)).flatten(1, 2)
        for level, (height, width) in zip(value_levels, shapes)
    ]
    table = torch.cat(padded, 1)  # (B, S_pad, H*D_h)
    padded_tokens = table.shape[1]
    widths = [width + 3 for _, width in shapes]
    first_rows, start = [], 0
    for (height, _), padded_width in zip(shapes, widths):
        first_rows.append(float(start + padded_width + 1))  # token of pixel (0, 0) inside the border
        start += (height + 3) * padded_width

    def per_level(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=device).view(levels, 1)  # (L, 1)

    size_x = per_level([float(width) for _, width in shapes])
    size_y = per_level([float(height) for height, _ in shapes])
    # pixel coordinates (align_corners=False); beyond [-1, size] every corner is outside and reads zero
    px = torch.nan_to_num(sampling_locations[..., 0] * size_x - 0.5, nan=-1.0)  # (B, Lq, H, L, P)
    py = torch.nan_to_num(sampling_locations[..., 1] * size_y - 0.5, nan=-1.0)
    px = px.clamp(min=-1.0).minimum(size_x)
    py = py.clamp(min=-1.0).minimum(size_y)
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    # row numbers in int32 when the table allows (half the bytes of int64 to write and gather from)
    index = torch.int32 if batch * padded_tokens * heads < INT32_ROWS else torch.int64
    token = torch.addcmul(x0 + per_level(first_rows), y0, per_level([float(w) for w in widths])).to(index)
    batch_head = torch.arange(batch, device=device, dtype=index).view(batch, 1, 1, 1, 1) * (
        padded_tokens * heads
    ) + torch.arange(heads, device=device, dtype=index).view(1, 1, heads, 1, 1)  # (B, 1, H, 1, 1)
    rows = token * heads + batch_head  # (B, Lq, H, L, P): row of the top-left corner in (B*S_pad*H, D_h)
    corners = torch.tensor(
        [[0, heads, width * heads, (width + 1) * heads] for width in widths], device=device, dtype=index
    ).view(levels, 1, 4)
    rows = rows[..., None] + corners  # (B, Lq, H, L, P, 4)
    top = attention_weights * (1 - fy)
    bottom = attention_weights * fy
    weights = torch.stack(
        [top * (1 - fx), top * fx, bottom * (1 - fx), bottom * fx], -1
    )  # (B, Lq, H, L, P, 4)
    bags = batch * num_queries * heads
    output = F.embedding_bag(
        rows.view(bags, levels * points * 4),
        table.view(batch * padded_tokens * heads, head_dim),
        per_sample_weights=weights.view(bags, levels * points * 4).to(table.dtype),
        mode="sum",
    )  # (B*Lq*H, D_h)
    return output.view(batch, num_queries, heads * head_dim)


def _gather_allowed(*tensors: Tensor) -> bool:
    """The gather path is forward-only: no gradient wanted, full precision, eager (not traced/exported)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    if torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    device_type = tensors[0].device.type
    if device_type == "cpu" and torch.is_autocast_enabled(device_type):
        return False
    return device_type == "cpu" and all(t.dtype in (torch.float32, torch.float64) for t in tensors)


def _recompute_allowed(*tensors: Tensor) -> bool:
    """Recomputing in backward only matters when a gradient is wanted, and is skipped while exporting."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (names and initialisation of the original release).

    Args:
        d_model: model width d.
        n_levels: feature levels L.
        n_heads: heads H (d must be divisible by H).
        n_points: sampling points P per level and head.

    Attributes:
        recompute_samples: when training, keep only the sampling inputs for backward and sample again there
            (activation checkpointing of the reference function): less memory for a little more time.
    """

    recompute_samples: bool = True

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Original init: offsets start on a ring of directions (one per head), point i at distance i+1."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # (H, 2)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)  # (H, L, P, 2)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        spatial_shapes_list: Sequence[tuple[int, int]] | None = None,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to P points per level and head around its reference point.

        Args:
            query: (B, Lq, d) queries (position embedding already added).
            reference_points: (B, Lq, L, 2) normalised (x, y), or (B, Lq, L, 4) normalised (cx, cy, w, h)
                boxes (box refinement / two-stage: offsets are scaled by the box size).
            input_flatten: (B, S, d) values of all levels, flattened.
            spatial_shapes: (L, 2) long (H_l, W_l).
            spatial_shapes_list: the same as Python ints (avoids a device sync); derived when None.
            input_padding_mask: (B, S) bool, True at padding tokens (their values are zeroed).

        Returns:
            (B, Lq, d).
        """
        shapes = _shape_list(spatial_shapes) if spatial_shapes_list is None else list(spatial_shapes_list)
        value, locations, weights = self.sampling_inputs(
            query, reference_points, input_flatten, spatial_shapes, input_padding_mask
        )
        if _gather_allowed(value, locations, weights):
            output = multi_scale_deformable_attention_gather(value, shapes, locations, weights)
        elif self.recompute_samples and _recompute_allowed(value, locations, weights):
            # the (B*H, D_h, Lq, P) samples would be kept for backward (178 MB per encoder layer at batch 2,
            # 512 px): keep only the inputs and sample again during backward (the same values, exactly)
            output = checkpoint(
                multi_scale_deformable_attention, value, shapes, locations, weights, use_reentrant=False
            )
        else:
            output = multi_scale_deformable_attention(value, shapes, locations, weights)
        return self.output_proj(output)

    def sampling_inputs(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What the sampling consumes: projected values, sampling locations and attention weights.

        Arguments as :meth:`forward`. Shared with the TensorRT plugin wrapper so the maths exists once.

        Returns:
            value (B, S, H, D_h), locations (B, Lq, H, L, P, 2) normalised, weights (B, Lq, H, L, P).
        """
        batch, num_queries, _ = query.shape
        _, num_tokens, _ = input_flatten.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            # in place: the projection's output is not saved for backward, so only one copy is kept
            value = value.masked_fill_(input_padding_mask[..., None], 0.0)
        value = value.view(batch, num_tokens, self.n_heads, self.d_model // self.n_heads)  # (B, S, H, D_h)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )  # (B, Lq, H, L, P, 2)
        weights = self.attention_weights(query).view(
            batch, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        weights = F.softmax(weights, -1).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points
        )  # (B, Lq, H, L, P)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (W_l, H_l)
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(
                offsets.dtype
            )  # (L, 2)
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"reference_points must have 2 or 4 coordinates, got {reference_points.shape[-1]}"
            )
        return value, locations, weights
