"""Dropout at about half torch's CPU cost: a mask of 15-bit random integers instead of one double per element.

On the CPU, ``torch.nn.functional.dropout`` draws its mask with ``bernoulli_``, one random double per element
from a sequential generator: 128 ms for the (2, 5440, 1024) feed-forward activations of a ResNet-50 encoder
layer at 512 px on 2 threads (``bench/cpu_step.py``), about 14% of a whole training step. :class:`Dropout` draws 64-bit random words
(four 15-bit numbers each, the top bit of every 16 is dropped, so all four are uniform), compares them with
``round(p * 32768)`` and zeroes with ``masked_fill``: 66 ms for the same tensor (forward and backward: 97
against 159 ms), and the mask kept for
the backward pass is one byte per element instead of four.

The drop probability is ``p`` rounded to a multiple of 1/32768 (0.1 -> 0.100006) and the kept values are
scaled by 1 / (1 - that probability), so the expected output equals the input exactly. The random words come
from torch's default CPU generator: ``torch.manual_seed`` reproduces a run, and activation checkpointing
(which restores that generator's state) recomputes the same mask. Elsewhere (CUDA, evaluation, tracing) it is
``nn.Dropout``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the resolution of the drop probability: 15 random bits per element
LEVELS = 1 << 15


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> Tensor:
    """A bool tensor of ``shape``, True (dropped) with probability ``round(p * 32768) / 32768`` per element."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()  # [0, 2**63)
    numbers = words.view(torch.int16)[:count].bitwise_and(LEVELS - 1)  # uniform in [0, 32768)
    return numbers.lt(round(p * LEVELS)).view(shape)


def effective_p(p: float) -> float:
    """The drop probability :class:`Dropout` applies on the CPU for a requested ``p``."""
    return round(p * LEVELS) / LEVELS


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        dropped = drop_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - effective_p(p))
        ctx.save_for_backward(dropped)
        ctx.scale = scale
        return x.masked_fill(dropped, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (dropped,) = ctx.saved_tensors
        return grad.masked_fill(dropped, 0.0).mul_(ctx.scale), None


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, no parameters) with the faster CPU mask of this module's docstring.

    Input: any shape; output: the same shape and dtype.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            not self.training
            or self.inplace
            or not 0.0 < effective_p(self.p) < 1.0
            or x.device.type != "cpu"
            or not x.is_floating_point()
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export()
        ):
            return F.dropout(x, self.p, self.training, self.inplace)
        return _CpuDropout.apply(x, self.p)
