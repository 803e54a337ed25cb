"""Position embeddings of a feature map: sine (from its padding mask, the original's formula) or learned tables."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ddetr.errors import SpecError


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


#: Rows and columns of the learned position tables (the size DETR and Hugging Face's learned embedding use).
LEARNED_POSITIONS = 50


class PositionEmbeddingLearned(nn.Module):
    """Learned 2-D position embedding: a column (x) table and a row (y) table, x features first.

    Position (i, j) of a feature map gets ``cat(col_embed[j], row_embed[i])``; padding is ignored (the
    embedding depends on the feature map's size only), as in Hugging Face's ``position_embedding_type='learned'``.

    Args:
        num_pos_feats: features per axis (hidden_dim // 2).
        num_positions: rows and columns the tables hold; a feature map may be at most this high and wide.
    """

    def __init__(self, num_pos_feats: int = 128, num_positions: int = LEARNED_POSITIONS) -> None:
        super().__init__()
        self.num_positions = num_positions
        self.row_embed = nn.Embedding(num_positions, num_pos_feats)
        self.col_embed = nn.Embedding(num_positions, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """mask (B, H, W) bool (only its shape is used) -> (B, 2 * num_pos_feats, H, W) in the tables' dtype.

        Raises:
            SpecError: H or W above ``num_positions`` (checked outside tracing and export).
        """
        batch, height, width = mask.shape
        if not _tracing() and (height > self.num_positions or width > self.num_positions):
            raise SpecError(
                f"model.position_embedding=learned: a {height}x{width} feature map is larger than the "
                f"{self.num_positions}x{self.num_positions} learned table; use smaller images or "
                "model.position_embedding=sine."
            )
        x_emb = self.col_embed(torch.arange(width, device=mask.device))  # (W, F)
        y_emb = self.row_embed(torch.arange(height, device=mask.device))  # (H, F)
        pos = torch.cat(
            (x_emb[None].expand(height, -1, -1), y_emb[:, None].expand(-1, width, -1)), dim=-1
        )  # (H, W, 2F)
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
