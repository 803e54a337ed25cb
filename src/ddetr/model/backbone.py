"""Backbones: torchvision ResNets (frozen batch norm) and timm feature extractors -> feature maps + masks.

Stage index i (``model.return_interm_indices`` values 0..3) is the i-th of the backbone's four stride
4/8/16/32 stages (ResNet ``layer{i+1}``). Indices >= 4 are not backbone stages: they are the extra
stride-2 3x3 conv levels built by the detector's input projection (see :func:`split_levels`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from ddetr.artefacts.checkpoint import safe_torch_load
from ddetr.errors import CheckpointError, SpecError
from ddetr.spec.rules import (
    BASIC_BLOCK_RESNETS,
    GC_VIT_BACKBONES,
    RESNET_BACKBONES,
    TIMM_PREFIX,
    check_backbone,
)
from ddetr.spec.sections import ModelSection

logger = logging.getLogger(__name__)

NUM_STAGES = 4

# The names the spec accepts are defined in ddetr.spec.rules; here, torchvision's name and the stage channels
# of each ResNet.
RESNETS: dict[str, tuple[str, list[int]]] = {
    name: (
        name.replace("_", ""),
        [64, 128, 256, 512] if name in BASIC_BLOCK_RESNETS else [256, 512, 1024, 2048],
    )
    for name in RESNET_BACKBONES
}


class LiveBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that learns and tracks statistics, with the state-dict keys of a frozen one.

    Used when the backbone is trained from scratch (``model.freeze_backbone_bn: false``): a frozen batch norm at
    its initial identity statistics leaves a randomly initialised ResNet without normalisation. It saves only
    weight, bias, running_mean and running_var (no ``num_batches_tracked``), so its checkpoints load into the
    frozen layout and, in eval mode, give the same outputs.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.register_buffer("num_batches_tracked", None)


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen batch norm whose affine map is applied by the convolution before it (forward is identity).

    Its buffers stay here, under the usual names, so state dicts are unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> x: the preceding :class:`BatchNormConv2d` already normalised it."""
        return x


class BatchNormConv2d(nn.Conv2d):
    """A convolution followed by a frozen batch norm, computed as one convolution.

    ``bn(conv(x)) = conv_{w * s}(x) + (b * s + beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``: the
    scale is applied to the (small) weight on every call instead of to the (large) output, which removes two
    full-size elementwise passes forward and backward and their temporaries. Exact up to float rounding;
    gradients reach ``weight`` through the scaling, so a trainable convolution stays trainable.
    """

    norm: FrozenBatchNorm2d

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H', W'), batch-normalised."""
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # (C_out,)
        shift = norm.bias - norm.running_mean * scale
        bias = shift if self.bias is None else self.bias * scale + shift
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), bias)


def _fold_pair(conv: nn.Module, norm: nn.Module) -> None:
    if type(conv) is not nn.Conv2d or type(norm) is not FrozenBatchNorm2d:
        return
    # swap classes in place: parameters, buffers and their state-dict names stay exactly as they are
    conv.__class__ = BatchNormConv2d
    norm.__class__ = FoldedFrozenBatchNorm2d
    conv.__dict__["norm"] = norm  # a plain reference, not a submodule (no duplicate state-dict keys)


def fold_frozen_batch_norms(net: nn.Module) -> nn.Module:
    """Fold each frozen batch norm of a torchvision ResNet into the convolution before it, in place.

    Covers the stem (``conv1``/``bn1``), every block's ``conv{i}``/``bn{i}`` and ``downsample`` (conv, bn).
    Other modules are left alone. Returns ``net``.
    """
    for module in net.modules():
        for index in (1, 2, 3):
            conv, norm = getattr(module, f"conv{index}", None), getattr(module, f"bn{index}", None)
            if conv is not None and norm is not None:
                _fold_pair(conv, norm)
        if isinstance(module, nn.Sequential) and len(module) == 2:
            _fold_pair(module[0], module[1])
    return net


def split_levels(return_interm_indices: list[int]) -> tuple[list[int], int]:
    """Backbone stages (values < 4, in order) and the number of extra conv levels (values >= 4)."""
    stages = [i for i in return_interm_indices if i < NUM_STAGES]
    return stages, len(return_interm_indices) - len(stages)


class Backbone(nn.Module):
    """A feature extractor returning the requested stages with their padding masks.

    Attributes:
        body: the network; its parameters are ``body.<torchvision or timm names>``.
        num_channels: channels of each returned stage.
        strides: stride (pixels) of each returned stage.
        name: the spec's backbone name.
        channels_last: without gradients, run the body on a channels-last copy of the images (CPU
            convolutions are faster in that layout; the features come out channels-last, which the later
            flatten/transpose reads as contiguous tokens). Not used while tracing or exporting.
    """

    def __init__(
        self,
        body: nn.Module,
        num_channels: list[int],
        strides: list[int],
        name: str,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.body = body
        self.num_channels = num_channels
        self.strides = strides
        self.name = name
        self.channels_last = channels_last

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """images (B, 3, H, W), mask (B, H, W) bool True at padding -> [(B, C_l, H_l, W_l), (B, H_l, W_l)] per stage."""
        # inference only: in training the channels-last backward measured slower and kept more memory
        if (
            self.channels_last
            and not torch.is_grad_enabled()
            and images.device.type == "cpu"
            and not _exporting()
        ):
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.body(images)
        if isinstance(features, dict):
            features = list(features.values())
        out = []
        for feature in features:
            level_mask = F.interpolate(mask[None].float(), size=feature.shape[-2:]).to(torch.bool)[0]
            out.append((feature, level_mask))
        return out


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def _resnet(model: ModelSection, stages: list[int]) -> Backbone:
    tv_name, channels = RESNETS[model.backbone]
    frozen = model.freeze_backbone_bn
    net = getattr(torchvision.models, tv_name)(
        weights=None,
        norm_layer=FrozenBatchNorm2d if frozen else LiveBatchNorm2d,
        replace_stride_with_dilation=[False, False, model.dilation],
    )
    if frozen:
        fold_frozen_batch_norms(net)
    # the original trains layer2..4 only: the stem and layer1 stay at their ImageNet values;
    # a backbone trained from scratch (freeze_backbone_bn=false) trains every layer
    for name, parameter in net.named_parameters():
        trainable = model.train_backbone and (not frozen or any(f"layer{k}" in name for k in (2, 3, 4)))
        parameter.requires_grad_(trainable)
    body = IntermediateLayerGetter(net, return_layers={f"layer{i + 1}": str(k) for k, i in enumerate(stages)})
    strides = [4, 8, 16, 32]
    if model.dilation:
        strides[-1] = 16
    return Backbone(
        body,
        [channels[i] for i in stages],
        [strides[i] for i in stages],
        model.backbone,
        channels_last=True,
    )


def _timm(model: ModelSection, timm_name: str, stages: list[int]) -> Backbone:
    import timm
    from timm.layers import freeze_batch_norm_2d

    if not timm.is_model(timm_name):
        raise SpecError(
            f"model.backbone: timm has no model named '{timm_name}' (from '{model.backbone}'); "
            "see timm.list_models() for the valid names."
        )
    # the four stride 4/8/16/32 stages are timm's last four feature levels
    out_indices = tuple(i - NUM_STAGES for i in stages)
    kwargs = {"output_stride": 16} if model.dilation else {}
    try:
        body = timm.create_model(
            timm_name, pretrained=False, features_only=True, out_indices=out_indices, **kwargs
        )
    except (RuntimeError, ValueError, TypeError, AssertionError, IndexError) as err:
        raise SpecError(
            f"model.backbone: timm model '{timm_name}' cannot give features at stages {stages} "
            f"(model.return_interm_indices={model.return_interm_indices}, dilation={model.dilation}): {err}"
        ) from err
    if model.freeze_backbone_bn:
        body = freeze_batch_norm_2d(body)
    if not model.train_backbone:
        for parameter in body.parameters():
            parameter.requires_grad_(False)
    return Backbone(
        body, list(body.feature_info.channels()), list(body.feature_info.reduction()), model.backbone
    )


def build_backbone(model: ModelSection) -> Backbone:
    """Build the backbone named by ``model.backbone`` for the stages in ``model.return_interm_indices``.

    Loads ``model.pretrained_backbone_path`` when set.

    Raises:
        SpecError: unknown backbone name (the spec's rule, :func:`ddetr.spec.rules.check_backbone`), a timm
            name timm does not know, or stages/dilation the backbone cannot provide.
        CheckpointError: the pretrained backbone file is unreadable or does not fit.
    """
    check_backbone(model)
    stages, _ = split_levels(model.return_interm_indices)
    name = model.backbone
    if name in RESNETS:
        backbone = _resnet(model, stages)
    elif name in GC_VIT_BACKBONES:
        backbone = _timm(model, GC_VIT_BACKBONES[name], stages)
    else:  # timm:<name> (check_backbone accepts nothing else)
        backbone = _timm(model, name.removeprefix(TIMM_PREFIX), stages)
    if model.pretrained_backbone_path:
        load_backbone_weights(backbone, model.pretrained_backbone_path)
    return backbone


def _normalise_key(key: str) -> str:
    # timm's feature wrappers flatten "stages.0" into "stages_0": compare names with both spellings unified
    return key.replace(".", "_")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    state = safe_torch_load(path, "cpu", name=f"model.pretrained_backbone_path: '{path}'")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"model.pretrained_backbone_path: '{path}' does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a backbone-only state dict (torchvision or timm names) into ``backbone.body``.

    Keys absent from the body (classifier ``fc.*``/``head.*``, unused stages) are ignored and counted.

    Raises:
        CheckpointError: unreadable file, no key in common, or a tensor whose shape does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.pretrained_backbone_path: '{path}' is not a file")
    source = {_normalise_key(k): v for k, v in _read_state_dict(path).items()}
    own = backbone.body.state_dict()
    matched: dict[str, Tensor] = {}
    mismatched: list[str] = []
    for key, tensor in own.items():
        candidate = source.get(_normalise_key(key))
        if candidate is None:
            continue
        if candidate.shape != tensor.shape:
            mismatched.append(f"{key} {tuple(candidate.shape)} vs {tuple(tensor.shape)}")
        else:
            matched[key] = candidate
    if mismatched:
        shown = "; ".join(mismatched[:5]) + (
            f"; ... ({len(mismatched)} in all)" if len(mismatched) > 5 else ""
        )
        raise CheckpointError(
            f"model.pretrained_backbone_path: '{path}' does not fit backbone {backbone.name}: "
            f"shape mismatch (file vs model) for {shown}"
        )
    if not matched:
        raise CheckpointError(
            f"model.pretrained_backbone_path: '{path}' has no tensor named like backbone {backbone.name}'s "
            f"parameters (e.g. '{next(iter(own), '')}')"
        )
    backbone.body.load_state_dict(matched, strict=False)
    missing = len(own) - len(matched)
    unexpected = len(source) - len(matched)
    logger.info(
        "loaded %d tensors from %s into backbone %s (%d missing, %d unexpected)",
        len(matched),
        path,
        backbone.name,
        missing,
        unexpected,
    )
