"""Hugging Face DeformableDetrForObjectDetection state dicts -> ddetr (original-release) layout.

Two HF layouts are read: the Hub's (``model.backbone.conv_encoder.model.*``, ``fc1``/``fc2``,
``self_attn.out_proj``; also what transformers 5.x ``save_pretrained`` writes, which drops tied copies)
and transformers 5.x's in-memory one (``model.backbone.model.*``, ``mlp.fc1``, ``self_attn.o_proj``).
Backbones: timm ones (``use_timm_backbone``; timm ResNets map onto torchvision names 1:1) and transformers' own
ResNet (``use_timm_backbone=False``, a ``resnet`` ``backbone_config``) in the variants that are torchvision's
ResNet-18/34/50/101, renamed onto torchvision's names. Both position embeddings (sine, learned) are supported.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import Tensor

from ddetr.errors import CheckpointError, SpecError
from ddetr.model.transformer import ACTIVATION_NAMES
from ddetr.spec.sections import ModelSection

logger = logging.getLogger(__name__)

_RESNET_NAMES = {
    "resnet18": "resnet_18",
    "resnet34": "resnet_34",
    "resnet50": "resnet_50",
    "resnet101": "resnet_101",
}
_BACKBONE_PREFIXES = ("model.backbone.conv_encoder.model.", "model.backbone.model.")
# transformers' ResNet (layer_type, depths, hidden_sizes) -> the torchvision ResNet with the same layers
_HF_RESNETS = {
    ("basic", (2, 2, 2, 2), (64, 128, 256, 512)): "resnet_18",
    ("basic", (3, 4, 6, 3), (64, 128, 256, 512)): "resnet_34",
    ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)): "resnet_50",
    ("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)): "resnet_101",
}
# what transformers' ResNetConfig assumes for a key a config.json leaves out
_HF_RESNET_DEFAULTS: dict[str, Any] = {
    "layer_type": "bottleneck",
    "depths": [3, 4, 6, 3],
    "hidden_sizes": [256, 512, 1024, 2048],
    "embedding_size": 64,
    "num_channels": 3,
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
}
_HF_RESNET_STEM = re.compile(r"^embedder\.embedder\.(convolution|normalization)\.(.+)$")
_HF_RESNET_BLOCK = re.compile(
    r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(?:layer\.(\d+)|shortcut)\.(convolution|normalization)\.(.+)$"
)
_POSITION_TABLES = {
    "model.position_embedding.row_embeddings.weight": "position_embedding.row_embed.weight",
    "model.position_embedding.column_embeddings.weight": "position_embedding.col_embed.weight",
}
_TRANSFORMER_MODULES = (
    "enc_output.",
    "enc_output_norm.",
    "pos_trans.",
    "pos_trans_norm.",
    "reference_points.",
)
_ENCODER_RENAMES = {
    "self_attn_layer_norm.": "norm1.",
    "fc1.": "linear1.",
    "mlp.fc1.": "linear1.",
    "fc2.": "linear2.",
    "mlp.fc2.": "linear2.",
    "final_layer_norm.": "norm2.",
    "activation_fn.": "activation_fn.",  # prelu / xielu parameters (Hub layout)
    "mlp.activation_fn.": "activation_fn.",
}
_DECODER_RENAMES = {
    "encoder_attn.": "cross_attn.",
    "encoder_attn_layer_norm.": "norm1.",
    "self_attn.out_proj.": "self_attn.out_proj.",
    "self_attn.o_proj.": "self_attn.out_proj.",
    "self_attn_layer_norm.": "norm2.",
    "fc1.": "linear1.",
    "mlp.fc1.": "linear1.",
    "fc2.": "linear2.",
    "mlp.fc2.": "linear2.",
    "final_layer_norm.": "norm3.",
    "activation_fn.": "activation_fn.",  # prelu / xielu parameters (Hub layout)
    "mlp.activation_fn.": "activation_fn.",
}
_MSDA_PARTS = ("sampling_offsets.", "attention_weights.", "value_proj.", "output_proj.")
_QKV = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")
_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _rename_layer_suffix(kind: str, suffix: str) -> str | None:
    if (
        kind == "encoder"
        and suffix.startswith("self_attn.")
        and suffix[len("self_attn.") :].startswith(_MSDA_PARTS)
    ):
        return suffix
    renames = _ENCODER_RENAMES if kind == "encoder" else _DECODER_RENAMES
    # longest prefix first: "encoder_attn_layer_norm." before "encoder_attn."
    for old in sorted(renames, key=len, reverse=True):
        if suffix.startswith(old):
            return renames[old] + suffix[len(old) :]
    return None


def _torchvision_resnet_name(name: str) -> str:
    """A backbone key of transformers' ResNet -> torchvision's name (other keys, e.g. timm's, unchanged).

    ``embedder.embedder.convolution`` is ``conv1``, stage s block b ``layer.j`` is ``layer{s+1}.{b}.conv{j+1}``
    (its normalization ``bn{j+1}``), ``shortcut`` is ``downsample.0`` / ``downsample.1``.
    """
    stem = _HF_RESNET_STEM.match(name)
    if stem:
        return ("conv1." if stem.group(1) == "convolution" else "bn1.") + stem.group(2)
    block = _HF_RESNET_BLOCK.match(name)
    if not block:
        return name
    stage, index, conv, part, rest = block.groups()
    prefix = f"layer{int(stage) + 1}.{index}."
    if conv is None:  # the shortcut
        return prefix + ("downsample.0." if part == "convolution" else "downsample.1.") + rest
    return prefix + ("conv" if part == "convolution" else "bn") + f"{int(conv) + 1}." + rest


def _rename(key: str) -> str | None:
    """One HF key -> our key (None when unknown). q/k/v projections are handled by the caller."""
    for prefix in _BACKBONE_PREFIXES:
        if key.startswith(prefix):
            return "backbone.body." + _torchvision_resnet_name(key[len(prefix) :])
    if key in _POSITION_TABLES:
        return _POSITION_TABLES[key]
    if key.startswith("model.input_proj."):
        return key[len("model.") :]
    if key == "model.query_position_embeddings.weight":
        return "query_embed.weight"
    if key == "model.level_embed":
        return "transformer.level_embed"
    if key.startswith("model.") and key[len("model.") :].startswith(_TRANSFORMER_MODULES):
        return "transformer." + key[len("model.") :]
    if key.startswith(("model.decoder.bbox_embed.", "model.decoder.class_embed.")):
        return "transformer." + key[len("model.") :]
    if key.startswith(("class_embed.", "bbox_embed.")):
        return key
    match = _LAYER.match(key)
    if match:
        kind, index, suffix = match.groups()
        renamed = _rename_layer_suffix(kind, suffix)
        if renamed is not None:
            return f"transformer.{kind}.layers.{index}.{renamed}"
    return None


def _hf_resnet_backbone(backbone_config: dict[str, Any]) -> tuple[str, list[int]]:
    """A transformers ResNet ``backbone_config`` -> (ddetr backbone name, its out_indices 1..4).

    Raises:
        CheckpointError: a variant that is not torchvision's ResNet-18/34/50/101, or stem features.
    """
    config = {**_HF_RESNET_DEFAULTS, **{k: v for k, v in backbone_config.items() if v is not None}}
    layer_type = config["layer_type"]
    key = (layer_type, tuple(config["depths"]), tuple(config["hidden_sizes"]))
    differences = [
        f"{name}={config[name]!r}"
        for name in ("embedding_size", "num_channels", "hidden_act", "downsample_in_first_stage")
        if config[name] != _HF_RESNET_DEFAULTS[name]
    ]
    if layer_type == "bottleneck" and config["downsample_in_bottleneck"]:
        differences.append("downsample_in_bottleneck=True")
    if key not in _HF_RESNETS or differences:
        what = ", ".join(differences) or (
            f"layer_type={layer_type!r}, depths={list(key[1])}, hidden_sizes={list(key[2])}"
        )
        raise CheckpointError(
            f"HF config: backbone_config (resnet) {what} is not one of torchvision's ResNet-18/34/50/101 "
            "(basic or bottleneck layers, depths 2-2-2-2/3-4-6-3/3-4-23-3, embedding_size 64, relu, "
            "no downsampling in the first stage or in the bottleneck's 1x1 convolution), the only ones importable."
        )
    out_indices = backbone_config.get("out_indices")
    if not out_indices:
        features = backbone_config.get("out_features") or ["stage4"]
        out_indices = [int(str(name).removeprefix("stage")) if name != "stem" else 0 for name in features]
    if min(out_indices) < 1:
        raise CheckpointError(
            f"HF config: backbone_config.out_indices={list(out_indices)} uses the ResNet stem (index 0); "
            "only stages 1..4 can be imported."
        )
    return _HF_RESNETS[key], [int(i) for i in out_indices]


def _backbone_from_hf_config(config: dict[str, Any], levels: int) -> tuple[str, list[int], bool]:
    """(ddetr backbone name, HF out_indices 1..4, dilation) of a HF config.

    Raises:
        CheckpointError: a backbone ddetr cannot reproduce.
    """
    backbone_config = config.get("backbone_config") or {}
    model_type = backbone_config.get("model_type")
    if not backbone_config and config.get("use_timm_backbone") is False:
        if config.get("backbone"):
            raise CheckpointError(
                f"HF config: use_timm_backbone=false with backbone='{config['backbone']}' and no backbone_config "
                "is not supported; only timm backbones and transformers' ResNet (backbone_config) can be imported."
            )
        # what transformers builds then: its default ResNet-50 giving the last stage
        backbone_config, model_type = {"model_type": "resnet", "out_features": ["stage4"]}, "resnet"
    if model_type == "resnet":
        name, out_indices = _hf_resnet_backbone(backbone_config)
        if config.get("dilation"):
            logger.info("HF config: dilation=true has no effect on transformers' ResNet backbone; not used")
        return name, out_indices, False
    if backbone_config and model_type != "timm_backbone":
        raise CheckpointError(
            f"HF config: backbone_config.model_type '{model_type}' is not supported; "
            "only timm backbones (use_timm_backbone) and transformers' ResNet (model_type 'resnet') can be imported."
        )
    timm_name = backbone_config.get("backbone") or config.get("backbone") or "resnet50"
    out_indices = backbone_config.get("out_indices") or ([2, 3, 4] if levels > 1 else [4])
    return (
        _RESNET_NAMES.get(timm_name, f"timm:{timm_name}"),
        list(out_indices),
        bool(config.get("dilation", False)),
    )


def model_section_from_hf_config(config: dict[str, Any]) -> tuple[ModelSection, int]:
    """Architecture fields of a HF ``config.json`` dict -> (ModelSection, num_classes).

    Separate encoder and decoder feed-forward widths and attention heads, every ``activation_function`` of
    transformers' ACT2FN (the learned ``prelu`` and ``xielu`` included), the learned position embedding and
    transformers' own ResNet backbone map to the model section; ``disable_custom_kernels`` (CUDA kernel or PyTorch path) and the training-only settings
    (dropouts, layer drop, init) do not change the outputs and are not needed.

    Raises:
        CheckpointError: a setting ddetr cannot reproduce (a backbone other than timm's or torchvision-equal
            ResNets, an unknown position embedding, an unknown activation).
    """
    position = config.get("position_embedding_type", "sine")
    if position not in ("sine", "learned"):
        raise CheckpointError(
            f"HF config: position_embedding_type='{position}' is not supported (only 'sine' and 'learned')."
        )
    activation = config.get("activation_function", "relu")
    if activation not in ACTIVATION_NAMES:
        raise CheckpointError(
            f"HF config: activation_function='{activation}' is not supported; supported: "
            f"{', '.join(ACTIVATION_NAMES)}."
        )
    enc_heads = int(config.get("encoder_attention_heads", 8))
    dec_heads = int(config.get("decoder_attention_heads", enc_heads))
    enc_ffn = int(config.get("encoder_ffn_dim", 1024))
    dec_ffn = int(config.get("decoder_ffn_dim", enc_ffn))
    levels = int(config.get("num_feature_levels", 4))
    backbone, out_indices, dilation = _backbone_from_hf_config(config, levels)
    if levels == 1:
        out_indices = out_indices[-1:]
    stages = [int(i) - 1 for i in out_indices]
    return_interm_indices = stages + list(range(4, 4 + levels - len(stages)))
    two_stage = bool(config.get("two_stage", False))
    num_queries = int(
        config.get("two_stage_num_proposals", 300) if two_stage else config.get("num_queries", 300)
    )
    id2label = config.get("id2label") or {}
    num_classes = len(id2label) if id2label else int(config.get("num_labels", 91))
    try:
        section = ModelSection(
            backbone=backbone,
            num_queries=num_queries,
            num_feature_levels=levels,
            return_interm_indices=return_interm_indices,
            with_box_refine=bool(config.get("with_box_refine", False)),
            two_stage=two_stage,
            hidden_dim=int(config.get("d_model", 256)),
            nheads=enc_heads,
            dec_nheads=None if dec_heads == enc_heads else dec_heads,
            enc_layers=int(config.get("encoder_layers", 6)),
            dec_layers=int(config.get("decoder_layers", 6)),
            dim_feedforward=enc_ffn,
            dec_dim_feedforward=None if dec_ffn == enc_ffn else dec_ffn,
            activation=activation,
            position_embedding=position,
            dropout_ratio=float(config.get("dropout", 0.1)),
            enc_n_points=int(config.get("encoder_n_points", 4)),
            dec_n_points=int(config.get("decoder_n_points", 4)),
            dilation=dilation,
            num_select=max(1, min(300, num_queries * num_classes - 1)),
        )
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise CheckpointError(f"HF config: cannot be expressed as a ddetr model section: {err}") from err
    return section, num_classes


def _expected_shapes(section: ModelSection, num_classes: int) -> dict[str, torch.Size]:
    from ddetr.model.detector import DeformableDETR

    try:
        with torch.device("meta"):
            model = DeformableDETR.from_config(section, num_classes)
    except SpecError as err:
        raise CheckpointError(f"HF config: describes a model ddetr cannot build: {err}") from err
    return {k: v.shape for k, v in model.state_dict().items()}


def _fallbacks(key: str, refine: bool) -> list[str]:
    """Keys holding the same tensor as ``key`` in tied/aliased layouts, in order of preference."""
    out = []
    for head in ("bbox_embed.", "class_embed."):
        if key.startswith(head):
            out.append("transformer.decoder." + key)
            # transformers 5.x save_pretrained treats class_embed.{i>0} as tied to class_embed.0 even with
            # box refinement and leaves them out; from_pretrained then fills them from class_embed.0 as well
            if not refine or head == "class_embed.":
                out.append(re.sub(r"^(\w+)\.\d+\.", r"\1.0.", key))
        elif key.startswith("transformer.decoder." + head):
            out.append(key[len("transformer.decoder.") :])
    return out


def _activation_tensor(state_dict: dict[str, Tensor], key: str, tensor: Tensor) -> Tensor:
    """A prelu/xielu tensor of HF key ``key`` -> fp32, as ddetr's layers hold it.

    transformers keeps xIELU's parameters in bfloat16 and computes its coefficients in that precision:
    ``a_p = softplus(alpha_p)`` and ``a_n = beta + softplus(alpha_n)`` rounded to bfloat16. ddetr computes them
    in fp32, so ``alpha_p`` / ``alpha_n`` become the fp32 values whose coefficients equal HF's rounded ones
    (the inverse softplus, ``log(expm1(y))``): the outputs then agree to fp32 rounding instead of ~1e-4.
    """
    name = key.rsplit(".", 1)[-1]
    if tensor.dtype == torch.float32 or name not in ("alpha_p", "alpha_n"):
        return tensor.float()
    coefficient = torch.nn.functional.softplus(tensor)  # in the file's precision, as transformers does
    if name == "alpha_n":
        beta = state_dict.get(key[: -len(name)] + "beta")
        if beta is None:
            return tensor.float()  # reported as a missing key by the caller
        beta = beta.to(tensor.dtype)
        coefficient = (beta + coefficient).double() - beta.double()
    return coefficient.double().expm1().log().float()


def convert_hf_state_dict(
    state_dict: dict[str, Tensor], config: dict[str, Any]
) -> tuple[dict[str, Tensor], ModelSection, int]:
    """Map a HF DeformableDetrForObjectDetection state dict (+ its config.json dict) to ddetr's keys.

    Returns:
        (state dict loadable with ``strict=True`` into ``DeformableDETR.from_config(section, num_classes)``,
        the model section, num_classes).

    Raises:
        CheckpointError: unknown, missing or mis-shaped keys (listed, truncated), or an unsupported config.
    """
    section, num_classes = model_section_from_hf_config(config)
    converted: dict[str, Tensor] = {}
    unknown: list[str] = []
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        match = _LAYER.match(key)
        qkv_match = _QKV.match(match.group(3)) if match and match.group(1) == "decoder" else None
        if qkv_match:
            target = f"transformer.decoder.layers.{match.group(2)}.self_attn.in_proj_{qkv_match.group(2)}"
            qkv.setdefault(target, {})[qkv_match.group(1)] = tensor
            continue
        new_key = _rename(key)
        if new_key is None:
            unknown.append(key)
        elif ".activation_fn." in new_key:
            converted[new_key] = _activation_tensor(state_dict, key, tensor)
        else:
            converted[new_key] = tensor
    incomplete = [k for k, parts in qkv.items() if set(parts) != {"q", "k", "v"}]
    if incomplete:
        raise CheckpointError(f"HF state dict: incomplete q/k/v projections for {_short(incomplete)}")
    for target, parts in qkv.items():
        converted[target] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    if unknown:
        raise CheckpointError(f"HF state dict: unknown keys {_short(unknown)}")

    expected = _expected_shapes(section, num_classes)
    result: dict[str, Tensor] = {}
    missing: list[str] = []
    for key in expected:
        candidates = [key, *_fallbacks(key, section.with_box_refine)]
        found = next((c for c in candidates if c in converted), None)
        if found is None:
            missing.append(key)
        else:
            result[key] = converted[found]
    if missing:
        raise CheckpointError(f"HF state dict: missing keys (ddetr names) {_short(missing)}")
    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"HF state dict: keys the configured model does not have (ddetr names) {_short(unexpected)}"
        )
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k])}" for k, v in result.items() if v.shape != expected[k]
    ]
    if shapes:
        raise CheckpointError(f"HF state dict: shape mismatch (file vs model) for {_short(shapes, 5)}")
    conflicts = [
        k
        for k in result
        for alias in _fallbacks(k, True)[:1]
        if alias in converted and k in converted and not torch.equal(converted[alias], converted[k])
    ]
    if conflicts:
        raise CheckpointError(
            f"HF state dict: heads that ddetr shares differ between the head and the decoder copy: {_short(conflicts)}"
        )
    logger.info("converted %d HF tensors into %d ddetr tensors", len(state_dict), len(result))
    return result, section, num_classes
