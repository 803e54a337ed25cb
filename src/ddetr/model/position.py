"""Sine position embedding of a feature map, computed from its padding mask (the original's formula)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Normalised 2-D sine/cosine embedding: y features first, then x, each ``num_pos_feats`` wide.

    Coordinates are cumulative counts of valid pixels, shifted by -0.5 to the pixel centre and divided
    by the valid extent (+ eps 1e-6), so padding never changes the embedding of valid pixels.

    Args:
        num_pos_feats: features per axis (hidden_dim // 2).
        temperature: frequency base.
        scale: the normalised coordinate range (2 pi).
    """

    def __init__(
        self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale
        self.eps = 1e-6

    def forward(self, mask: Tensor) -> Tensor:
        """mask (B, H, W) bool, True at padding -> (B, 2 * num_pos_feats, H, W) float32."""
        not_mask = (~mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)  # (B, H, W)
        x_embed = not_mask.cumsum(2)
        y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + self.eps) * self.scale
        x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t  # (B, H, W, F)
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, H, W)
