"""Hugging Face DeformableDetrForObjectDetection state dicts -> ddetr (original-release) layout.

Two HF layouts are read: the Hub's (``model.backbone.conv_encoder.model.*``, ``fc1``/``fc2``,
``self_attn.out_proj``; also what transformers 5.x ``save_pretrained`` writes, which drops tied copies)
and transformers 5.x's in-memory one (``model.backbone.model.*``, ``mlp.fc1``, ``self_attn.o_proj``).
Only timm backbones (``use_timm_backbone``) are supported; timm ResNets map onto torchvision names 1:1.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import Tensor

from ddetr.errors import CheckpointError, SpecError
from ddetr.model.transformer import FFN_ACTIVATIONS
from ddetr.spec.sections import ModelSection

logger = logging.getLogger(__name__)

_RESNET_NAMES = {
    "resnet18": "resnet_18",
    "resnet34": "resnet_34",
    "resnet50": "resnet_50",
    "resnet101": "resnet_101",
}
_BACKBONE_PREFIXES = ("model.backbone.conv_encoder.model.", "model.backbone.model.")
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


def _rename(key: str) -> str | None:
    """One HF key -> our key (None when unknown). q/k/v projections are handled by the caller."""
    for prefix in _BACKBONE_PREFIXES:
        if key.startswith(prefix):
            return "backbone.body." + key[len(prefix) :]
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


def model_section_from_hf_config(config: dict[str, Any]) -> tuple[ModelSection, int]:
    """Architecture fields of a HF ``config.json`` dict -> (ModelSection, num_classes).

    Separate encoder and decoder feed-forward widths and attention heads, and every parameter-free
    ``activation_function`` map to the model section; ``disable_custom_kernels`` (CUDA kernel or PyTorch path) and the training-only
    settings (dropouts, layer drop, init) do not change the outputs and are not needed.

    Raises:
        CheckpointError: a setting ddetr cannot reproduce (non-timm backbone, learned position embedding,
            an activation with learned parameters).
    """
    backbone_config = config.get("backbone_config") or {}
    if backbone_config and backbone_config.get("model_type") != "timm_backbone":
        raise CheckpointError(
            f"HF config: backbone_config.model_type '{backbone_config.get('model_type')}' is not supported; "
            "only timm backbones (use_timm_backbone) can be imported."
        )
    if not backbone_config and config.get("use_timm_backbone") is False:
        raise CheckpointError(
            "HF config: use_timm_backbone=false is not supported; only timm backbones can be imported."
        )
    if config.get("position_embedding_type", "sine") != "sine":
        raise CheckpointError(
            f"HF config: position_embedding_type='{config.get('position_embedding_type')}' is not supported "
            "(only 'sine')."
        )
    activation = config.get("activation_function", "relu")
    if activation not in FFN_ACTIVATIONS:
        raise CheckpointError(
            f"HF config: activation_function='{activation}' is not supported (it has learned parameters or "
            f"is unknown); supported: {', '.join(FFN_ACTIVATIONS)}."
        )
    enc_heads = int(config.get("encoder_attention_heads", 8))
    dec_heads = int(config.get("decoder_attention_heads", enc_heads))
    enc_ffn = int(config.get("encoder_ffn_dim", 1024))
    dec_ffn = int(config.get("decoder_ffn_dim", enc_ffn))
    timm_name = backbone_config.get("backbone") or config.get("backbone") or "resnet50"
    levels = int(config.get("num_feature_levels", 4))
    out_indices = backbone_config.get("out_indices") or ([2, 3, 4] if levels > 1 else [4])
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
            backbone=_RESNET_NAMES.get(timm_name, f"timm:{timm_name}"),
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
            dropout_ratio=float(config.get("dropout", 0.1)),
            enc_n_points=int(config.get("encoder_n_points", 4)),
            dec_n_points=int(config.get("decoder_n_points", 4)),
            dilation=bool(config.get("dilation", False)),
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
