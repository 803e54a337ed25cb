"""Deformable transformer: encoder, decoder, two-stage proposals, box-refinement plumbing.

Symbols: B batch, L feature levels, S encoder tokens (sum of H_l * W_l), Q queries, d hidden_dim.
Module names give the original release's state-dict keys (``transformer.encoder.layers.0.self_attn...``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ddetr.errors import DataError
from ddetr.model.dropout import Dropout
from ddetr.model.msda import MSDeformAttn


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x to at least ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_erf(x: Tensor) -> Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x.pow(3))))


def _laplace(x: Tensor) -> Tensor:
    # the Laplace activation with mu = 1/sqrt(2), sigma = 1/sqrt(4 pi) (as Hugging Face defines it)
    return 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0))))


def _gelu_clipped(x: Tensor) -> Tensor:
    return F.gelu(x).clamp(-10.0, 10.0)


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def _relu_squared(x: Tensor) -> Tensor:
    return F.relu(x).square()


def _identity(x: Tensor) -> Tensor:
    return x


def _sqrt_softplus(x: Tensor) -> Tensor:
    return F.softplus(x).sqrt()


# module-level functions only, so that a model with any activation pickles (DDP spawn, torch.save)
#: ``model.activation`` name -> function; the names are Hugging Face's ``activation_function`` values.
FFN_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_python": _gelu_erf,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu_python_tanh": _gelu_tanh,
    "gelu_10": _gelu_clipped,
    "quick_gelu": _quick_gelu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "relu2": _relu_squared,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "hardswish": F.hardswish,
    "laplace": _laplace,
    "linear": _identity,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "sqrtsoftplus": _sqrt_softplus,
}


class XIELU(nn.Module):
    """xIELU, the activation with learned parameters of Huang & Schlag (arXiv 2411.13010), kept in fp32.

    With ``a_p = softplus(alpha_p)`` and ``a_n = beta + softplus(alpha_n)``:
    ``f(x) = a_p x^2 + beta x`` for x > 0, else ``a_n (expm1(min(x, eps)) - x) + beta x``.
    ``alpha_p`` and ``alpha_n`` (shape (1,)) are learned; ``beta`` and ``eps`` are fixed buffers. The names and
    the initial values (alpha_p 0.8, alpha_n 0.8 overall, beta 0.5, eps -1e-6) are Hugging Face's ``xielu``.
    Traced for ONNX export, ``expm1`` (not an ONNX operator) is computed as ``exp - 1``.
    """

    def __init__(
        self, alpha_p_init: float = 0.8, alpha_n_init: float = 0.8, beta: float = 0.5, eps: float = -1e-6
    ) -> None:
        super().__init__()
        # store the inverse softplus of the initial values: log(expm1(y))
        self.alpha_p = nn.Parameter(torch.tensor([alpha_p_init]).expm1().log())
        self.alpha_n = nn.Parameter(torch.tensor([alpha_n_init - beta]).expm1().log())
        self.register_buffer("beta", torch.tensor(beta))
        self.register_buffer("eps", torch.tensor(eps))

    def forward(self, x: Tensor) -> Tensor:
        """x (any shape) -> f(x), same shape."""
        a_p = F.softplus(self.alpha_p)
        a_n = self.beta + F.softplus(self.alpha_n)
        linear = self.beta * x
        positive = a_p * x * x + linear
        clipped = torch.minimum(x, self.eps)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # ONNX has no expm1; exp(x) - 1 differs from it by at most ~1e-7 (absolute) for x <= eps < 0
            below = torch.exp(clipped) - 1.0
        else:
            below = torch.expm1(clipped)
        negative = (below - x) * a_n + linear
        return torch.where(x > 0, positive, negative)


#: ``model.activation`` name -> module class of the activations with learned parameters; each encoder and
#: decoder layer holds its own instance as ``activation_fn`` (Hugging Face's ``activation_function`` names).
LEARNED_ACTIVATIONS: dict[str, type[nn.Module]] = {"prelu": nn.PReLU, "xielu": XIELU}
#: every ``model.activation`` name
ACTIVATION_NAMES: tuple[str, ...] = (*FFN_ACTIVATIONS, *LEARNED_ACTIVATIONS)


class _FeedForwardActivation:
    """Mixin of the layers: the feed-forward activation, a module-level function or a learned module."""

    activation_fn: nn.Module | None
    _act: Callable[[Tensor], Tensor] | None

    def _init_activation(self, activation: str) -> None:
        self.activation = activation
        if activation in LEARNED_ACTIVATIONS:
            self._act = None
            self.activation_fn = LEARNED_ACTIVATIONS[activation]()
        else:
            self._act = FFN_ACTIVATIONS[activation]
            self.activation_fn = None

    def _ffn_act(self, x: Tensor) -> Tensor:
        if self.activation_fn is not None:
            return self.activation_fn(x)
        return self._act(x)  # type: ignore[misc]


def run_layer(layer: nn.Module, recompute: bool, *args: object) -> Tensor:
    """``layer(*args)``; with ``recompute`` in training under autograd, its activations are not kept for the
    backward pass but recomputed there (gradient checkpointing, ``train.activation_checkpoint``)."""
    if recompute and layer.training and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


def valid_ratios_of(mask: Tensor) -> Tensor:
    """mask (B, H, W) True at padding -> (B, 2) valid fraction of the width and the height."""
    _, height, width = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)


class DeformableTransformerEncoderLayer(_FeedForwardActivation, nn.Module):
    """Post-norm layer: deformable self-attention, then the feed-forward (ReLU unless ``activation`` says)."""

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self._init_activation(activation)
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        shapes: list[tuple[int, int]],
        padding_mask: Tensor,
    ) -> Tensor:
        """src, pos (B, S, d); reference_points (B, S, L, 2); padding_mask (B, S) -> (B, S, d)."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, shapes, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(self._ffn_act(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableTransformerEncoder(nn.Module):
    """A stack of encoder layers; each token's reference point is its own pixel centre.

    ``activation_checkpoint`` (set by training): recompute each layer in the backward pass instead of keeping
    its activations.
    """

    def __init__(self, layers: list[DeformableTransformerEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.activation_checkpoint = False

    @staticmethod
    def get_reference_points(shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
        """Pixel centres normalised by the valid extent -> (B, S, L, 2), rescaled to each level."""
        points = []
        for level, (height, width) in enumerate(shapes):
            # arange + 0.5 equals the original's linspace(0.5, n - 0.5, n) exactly and traces to float32
            ref_y, ref_x = torch.meshgrid(
                torch.arange(height, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
                torch.arange(width, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)  # (B, H_l*W_l)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            points.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(points, 1)  # (B, S, 2)
        return reference_points[:, :, None] * valid_ratios[:, None]  # (B, S, L, 2)

    def forward(
        self,
        src: Tensor,
        spatial_shapes: Tensor,
        shapes: list[tuple[int, int]],
        valid_ratios: Tensor,
        pos: Tensor,
        padding_mask: Tensor,
    ) -> Tensor:
        """src, pos (B, S, d); valid_ratios (B, L, 2); padding_mask (B, S) -> memory (B, S, d)."""
        reference_points = self.get_reference_points(shapes, valid_ratios)
        output = src
        for layer in self.layers:
            output = run_layer(
                layer,
                self.activation_checkpoint,
                output,
                pos,
                reference_points,
                spatial_shapes,
                shapes,
                padding_mask,
            )
        return output


class DeformableTransformerDecoderLayer(_FeedForwardActivation, nn.Module):
    """Post-norm layer: self-attention between queries, deformable cross-attention, feed-forward."""

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self._init_activation(activation)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        src: Tensor,
        spatial_shapes: Tensor,
        shapes: list[tuple[int, int]],
        padding_mask: Tensor,
    ) -> Tensor:
        """tgt, query_pos (B, Q, d); reference_points (B, Q, L, 2|4); src (B, S, d) -> (B, Q, d)."""
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        attended = self.cross_attn(
            tgt + query_pos, reference_points, src, spatial_shapes, shapes, padding_mask
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout3(self._ffn_act(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableTransformerDecoder(nn.Module):
    """A stack of decoder layers returning every layer's output and reference points.

    ``bbox_embed`` (box refinement) and ``class_embed`` (two-stage) are set by the detector to its own
    heads (aliases, as in the original); ``bbox_embed`` None means the reference points stay fixed.
    ``activation_checkpoint`` as in :class:`DeformableTransformerEncoder`.
    """

    def __init__(self, layers: list[DeformableTransformerDecoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.activation_checkpoint = False
        self.num_layers = len(layers)
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        src: Tensor,
        spatial_shapes: Tensor,
        shapes: list[tuple[int, int]],
        valid_ratios: Tensor,
        query_pos: Tensor,
        padding_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Decode.

        Args:
            tgt, query_pos: (B, Q, d) content queries and their position embedding.
            reference_points: (B, Q, 2) normalised points, or (B, Q, 4) boxes (two-stage).
            src: (B, S, d) encoder memory; padding_mask (B, S) True at padding.
            valid_ratios: (B, L, 2).

        Returns:
            hidden states (n_layers, B, Q, d) and reference points after each layer (n_layers, B, Q, 2|4).
        """
        output = tgt
        hidden_states = []
        references = []
        for index, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (B, 1, L, 4)
            else:
                ratios = valid_ratios[:, None]  # (B, 1, L, 2)
            reference_input = reference_points[:, :, None] * ratios  # (B, Q, L, 2|4)
            output = run_layer(
                layer,
                self.activation_checkpoint,
                output,
                query_pos,
                reference_input,
                src,
                spatial_shapes,
                shapes,
                padding_mask,
            )
            if self.bbox_embed is not None:
                delta = self.bbox_embed[index](output)  # (B, Q, 4)
                if reference_points.shape[-1] == 4:
                    new_reference = delta + inverse_sigmoid(reference_points)
                else:
                    new_reference = torch.cat(
                        [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1
                    )
                reference_points = new_reference.sigmoid().detach()
            hidden_states.append(output)
            references.append(reference_points)
        return torch.stack(hidden_states), torch.stack(references)


@dataclass(frozen=True)
class TransformerOutput:
    """Decoder states and the reference points the heads add their deltas to.

    Attributes:
        hidden_states: (n_dec, B, Q, d).
        init_reference: (B, Q, 2|4) reference points fed to the first decoder layer (sigmoid space).
        inter_references: (n_dec, B, Q, 2|4) reference points after each decoder layer.
        enc_outputs_class: two-stage only, (B, S, C) proposal logits.
        enc_outputs_coord_unact: two-stage only, (B, S, 4) proposal boxes before sigmoid.
    """

    hidden_states: Tensor
    init_reference: Tensor
    inter_references: Tensor
    enc_outputs_class: Tensor | None = None
    enc_outputs_coord_unact: Tensor | None = None


class DeformableTransformer(nn.Module):
    """Encoder + decoder over the flattened levels, with the two-stage proposal head when enabled."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        dec_n_points: int = 4,
        enc_n_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
        dec_dim_feedforward: int | None = None,
        activation: str = "relu",
        dec_nhead: int | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATION_NAMES:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATION_NAMES)}")
        self.d_model = d_model
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.encoder = DeformableTransformerEncoder(
            [
                DeformableTransformerEncoderLayer(
                    d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points, activation
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.decoder = DeformableTransformerDecoder(
            [
                DeformableTransformerDecoderLayer(
                    d_model,
                    dec_dim_feedforward or dim_feedforward,
                    dropout,
                    num_feature_levels,
                    dec_nhead or nhead,
                    dec_n_points,
                    activation,
                )
                for _ in range(num_decoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Original init: xavier for every matrix, MSDA's own init, xavier reference points, normal level embed."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def set_activation_checkpoint(self, enabled: bool) -> None:
        """Recompute encoder and decoder layers in the backward pass (training only) instead of keeping
        their activations: less memory for about one more forward pass of the transformer.

        The deformable attention's (B*H, D_h, Lq, P) samples follow the same switch
        (:attr:`MSDeformAttn.recompute_samples`): kept when ``enabled`` is False (the fastest step), sampled
        again in the backward pass when True (the least memory)."""
        self.encoder.activation_checkpoint = bool(enabled)
        self.decoder.activation_checkpoint = bool(enabled)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.recompute_samples = bool(enabled)

    def get_proposal_pos_embed(self, proposals: Tensor) -> Tensor:
        """proposals (B, Q, 4) logits -> (B, Q, 2d) sine embedding of the sigmoid box (d/2 features per coord)."""
        num_pos_feats = self.d_model // 2
        temperature = 10000
        scale = 2 * math.pi
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        proposals = proposals.sigmoid().float() * scale
        pos = proposals[:, :, :, None] / dim_t  # (B, Q, 4, d/2)
        return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(
            2
        )  # (B, Q, 2d)

    def gen_encoder_output_proposals(
        self, memory: Tensor, padding_mask: Tensor, shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """One proposal per encoder token: its pixel centre and a level-dependent size (0.05 * 2^l).

        Returns:
            output_memory (B, S, d) after enc_output + norm (zero at padding/invalid tokens), and
            output_proposals (B, S, 4) inverse-sigmoid boxes, +inf where padding or near the border.
        """
        batch = memory.shape[0]
        proposals = []
        start = 0
        for level, (height, width) in enumerate(shapes):
            level_mask = padding_mask[:, start : start + height * width].view(batch, height, width)
            valid_h = torch.sum(~level_mask[:, :, 0], 1)
            valid_w = torch.sum(~level_mask[:, 0, :], 1)
            grid_y, grid_x = torch.meshgrid(
                torch.arange(height, dtype=torch.float32, device=memory.device),
                torch.arange(width, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)  # (H_l, W_l, 2)
            scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(batch, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale  # (B, H_l, W_l, 2)
            size = torch.ones_like(grid) * 0.05 * (2.0**level)
            proposals.append(torch.cat((grid, size), -1).view(batch, -1, 4))  # (B, H_l*W_l, 4)
            start += height * width
        output_proposals = torch.cat(proposals, 1)  # (B, S, 4)
        valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        output_proposals = output_proposals.masked_fill(padding_mask.unsqueeze(-1), float("inf"))
        output_proposals = output_proposals.masked_fill(~valid, float("inf"))
        output_memory = memory.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        output_memory = output_memory.masked_fill(~valid, 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        return output_memory, output_proposals

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        query_embed: Tensor | None = None,
    ) -> TransformerOutput:
        """Run encoder and decoder.

        Args:
            srcs: per level (B, d, H_l, W_l) projected features.
            masks: per level (B, H_l, W_l) bool, True at padding.
            pos_embeds: per level (B, d, H_l, W_l) position embeddings.
            query_embed: (Q, 2d) learned queries (position half first) when not two-stage.
        """
        shapes: list[tuple[int, int]] = []
        src_flatten, mask_flatten, pos_flatten = [], [], []
        for level, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append((src.shape[2], src.shape[3]))
            src_flatten.append(src.flatten(2).transpose(1, 2))  # (B, H_l*W_l, d)
            mask_flatten.append(mask.flatten(1))  # (B, H_l*W_l)
            pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        src_cat = torch.cat(src_flatten, 1)  # (B, S, d)
        mask_cat = torch.cat(mask_flatten, 1)  # (B, S)
        pos_cat = torch.cat(pos_flatten, 1)  # (B, S, d)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_cat.device)  # (L, 2)
        valid_ratios = torch.stack([valid_ratios_of(m) for m in masks], 1)  # (B, L, 2)

        memory = self.encoder(src_cat, spatial_shapes, shapes, valid_ratios, pos_cat, mask_cat)

        batch, num_tokens, channels = memory.shape
        enc_class = enc_coord = None
        if self.two_stage:
            if self.decoder.class_embed is None or self.decoder.bbox_embed is None:
                raise RuntimeError(
                    "two-stage needs decoder.class_embed and decoder.bbox_embed set by the detector"
                )
            if num_tokens < self.two_stage_num_proposals:
                raise DataError(
                    f"two-stage: the image gives {num_tokens} encoder tokens, fewer than model.num_queries="
                    f"{self.two_stage_num_proposals}; use larger images or fewer queries."
                )
            output_memory, output_proposals = self.gen_encoder_output_proposals(memory, mask_cat, shapes)
            last = self.decoder.num_layers
            enc_class = self.decoder.class_embed[last](output_memory)  # (B, S, C)
            enc_coord = self.decoder.bbox_embed[last](output_memory) + output_proposals  # (B, S, 4)
            topk = torch.topk(enc_class[..., 0], self.two_stage_num_proposals, dim=1)[1]  # (B, Q)
            topk_coords = torch.gather(
                enc_coord, 1, topk.unsqueeze(-1).expand(-1, -1, 4)
            ).detach()  # (B, Q, 4)
            reference_points = topk_coords.sigmoid()
            pos_trans_out = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(topk_coords)))
            query_pos, tgt = torch.split(pos_trans_out, channels, dim=2)
        else:
            if query_embed is None:
                raise RuntimeError("query_embed is required when not two-stage")
            query_pos, tgt = torch.split(query_embed, channels, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, d)
            tgt = tgt.unsqueeze(0).expand(batch, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        init_reference = reference_points

        hidden_states, inter_references = self.decoder(
            tgt, reference_points, memory, spatial_shapes, shapes, valid_ratios, query_pos, mask_cat
        )
        return TransformerOutput(hidden_states, init_reference, inter_references, enc_class, enc_coord)
