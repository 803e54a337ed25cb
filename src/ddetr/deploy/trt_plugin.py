"""The attention as TensorRT's ``MultiscaleDeformableAttnPlugin_TRT`` node, for ``export`` with ``on_cpu: false``.

In PyTorch the plugin module computes exactly what :class:`ddetr.model.msda.MSDeformAttn` computes (it calls
the reference :func:`~ddetr.model.msda.multi_scale_deformable_attention`), so a traced export has the same
numbers; in the ONNX graph the sampling becomes one custom node with TensorRT's plugin inputs:

- ``value`` (B, S, H, D_h) float,
- ``spatial_shapes`` (L, 2) int32 (H_l, W_l),
- ``level_start_index`` (L,) int32,
- ``sampling_locations`` (B, Lq, H, L, P, 2) float in [0, 1],
- ``attention_weights`` (B, Lq, H, L, P) float,

and output (B, Lq, H, D_h). TensorRT's ONNX parser looks plugins up by op type; the node sits in the custom
domain :data:`PLUGIN_DOMAIN` so that ``onnx.checker`` accepts the file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ddetr.model.msda import MSDeformAttn, multi_scale_deformable_attention

PLUGIN_OP = "MultiscaleDeformableAttnPlugin_TRT"
PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_INPUTS = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")


class _PluginAttention(torch.autograd.Function):
    """Reference sampling in PyTorch; one plugin node in the exported graph."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: object,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
    ) -> Tensor:
        batch, _, heads, head_dim = value.shape
        num_queries = sampling_locations.shape[1]
        out = multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights)
        return out.view(batch, num_queries, heads, head_dim)  # (B, Lq, H, D_h)

    @staticmethod
    def symbolic(
        g: torch.Graph,
        value: torch.Value,
        spatial_shapes: torch.Value,
        level_start_index: torch.Value,
        sampling_locations: torch.Value,
        attention_weights: torch.Value,
    ) -> torch.Value:
        out = g.op(
            f"{PLUGIN_DOMAIN}::{PLUGIN_OP}",
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
        )
        value_sizes = value.type().varyingSizes()  # [B, S, H, D_h], None where dynamic
        location_sizes = sampling_locations.type().varyingSizes()  # [B, Lq, H, L, P, 2]
        if value_sizes is not None and location_sizes is not None:
            out.setType(
                value.type().with_sizes(
                    [location_sizes[0], location_sizes[1], value_sizes[2], value_sizes[3]]
                )
            )
        return out


class PluginMSDeformAttn(nn.Module):
    """Wraps an :class:`MSDeformAttn` (sharing its weights) and routes the sampling through the plugin op."""

    def __init__(self, inner: MSDeformAttn) -> None:
        super().__init__()
        self.inner = inner

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        spatial_shapes_list: Sequence[tuple[int, int]] | None = None,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Same arguments and result as :meth:`MSDeformAttn.forward`: (B, Lq, d)."""
        m = self.inner
        value, locations, weights = m.sampling_inputs(
            query, reference_points, input_flatten, spatial_shapes, input_padding_mask
        )
        shapes = spatial_shapes.to(torch.int32)
        areas = shapes[:, 0] * shapes[:, 1]
        level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]]).to(torch.int32)  # (L,)
        sampled = _PluginAttention.apply(value, shapes, level_start_index, locations, weights)
        return m.output_proj(sampled.flatten(2))  # (B, Lq, H, D_h) -> (B, Lq, d)


def with_plugin_attention(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose every :class:`MSDeformAttn` is wrapped in :class:`PluginMSDeformAttn`."""
    model = copy.deepcopy(model)
    targets = [name for name, module in model.named_modules() if isinstance(module, MSDeformAttn)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PluginMSDeformAttn(getattr(parent, child)))
    return model
