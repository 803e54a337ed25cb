"""Weight import from the original Deformable DETR release and from Hugging Face, into ddetr checkpoints.

Our state-dict keys are the original release's keys, except ``backbone.0.body.`` -> ``backbone.body.``.
The original layout (per variant) is listed in ``tests/assets/original_layouts``; :func:`original_layout`
computes it from a model section so that an imported file is checked key by key and shape by shape:
nothing is dropped or invented silently.

Symbols: d hidden_dim, L feature levels, H heads, P sampling points, C classes, Q queries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from pydantic import ValidationError

from ddetr.artefacts.checkpoint import describe_mismatch, safe_torch_load
from ddetr.errors import CheckpointError
from ddetr.spec.sections import ModelSection

logger = logging.getLogger(__name__)

ORIGINAL_BACKBONE_PREFIX = "backbone.0.body."
OUR_BACKBONE_PREFIX = "backbone.body."
# The original code's flags -> ModelSection fields, where the name differs or is the same.
_ARGS_TO_FIELDS = {
    "hidden_dim": "hidden_dim",
    "nheads": "nheads",
    "enc_layers": "enc_layers",
    "dec_layers": "dec_layers",
    "dim_feedforward": "dim_feedforward",
    "num_queries": "num_queries",
    "enc_n_points": "enc_n_points",
    "dec_n_points": "dec_n_points",
    "num_feature_levels": "num_feature_levels",
    "with_box_refine": "with_box_refine",
    "two_stage": "two_stage",
    "dilation": "dilation",
    "dropout": "dropout_ratio",
    "aux_loss": "aux_loss",
    "cls_loss_coef": "cls_loss_coef",
    "bbox_loss_coef": "bbox_loss_coef",
    "giou_loss_coef": "giou_loss_coef",
    "focal_alpha": "focal_alpha",
}
# Output channels of ResNet stages layer1..layer4 (indices 0..3).
_STAGE_CHANNELS = {"basic": (64, 128, 256, 512), "bottleneck": (256, 512, 1024, 2048)}
# The original post-processing keeps the top 100 detections; COCO scores at most 100 per image.
ORIGINAL_NUM_SELECT = 100
# The original main.py's defaults for the architecture flags (used when a flag is absent from ``args``).
ORIGINAL_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet50",
    "hidden_dim": 256,
    "nheads": 8,
    "enc_layers": 6,
    "dec_layers": 6,
    "dim_feedforward": 1024,
    "num_queries": 300,
    "enc_n_points": 4,
    "dec_n_points": 4,
    "num_feature_levels": 4,
    "with_box_refine": False,
    "two_stage": False,
    "dilation": False,
    "dropout": 0.1,
}


def interm_indices_for_levels(num_feature_levels: int) -> list[int]:
    """Backbone stages the original code feeds to the transformer for ``num_feature_levels`` levels.

    One level uses the last stage (``layer4``, index 3). More levels use ``layer2..layer4`` (strides 8, 16,
    32: indices 1, 2, 3) and add stride-2 3x3 convs for levels beyond three (index 4, then 5).

    Raises:
        CheckpointError: for 2 levels, a layout the original code cannot build.
    """
    if num_feature_levels == 1:
        return [3]
    if num_feature_levels < 3:
        raise CheckpointError(
            f"num_feature_levels={num_feature_levels}: the original code builds 1 or >= 3 feature levels only"
        )
    return [1, 2, 3, *range(4, num_feature_levels + 1)]


def _resnet_keys(backbone: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a torchvision ResNet trunk (no fc, no num_batches_tracked), built on meta."""
    depth = backbone.removeprefix("resnet_")
    if backbone not in ("resnet_18", "resnet_34", "resnet_50", "resnet_101"):
        raise CheckpointError(f"model.backbone={backbone!r}: weight import supports resnet_18/34/50/101 only")
    with torch.device("meta"):
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    return {
        k: tuple(v.shape)
        for k, v in net.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }


def _msda_keys(prefix: str, d: int, heads: int, levels: int, points: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.sampling_offsets.weight": (heads * levels * points * 2, d),
        f"{prefix}.sampling_offsets.bias": (heads * levels * points * 2,),
        f"{prefix}.attention_weights.weight": (heads * levels * points, d),
        f"{prefix}.attention_weights.bias": (heads * levels * points,),
        f"{prefix}.value_proj.weight": (d, d),
        f"{prefix}.value_proj.bias": (d,),
        f"{prefix}.output_proj.weight": (d, d),
        f"{prefix}.output_proj.bias": (d,),
    }


def _linear(prefix: str, out_f: int, in_f: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out_f, in_f), f"{prefix}.bias": (out_f,)}


def _norm(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    """LayerNorm / GroupNorm affine parameters."""
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}


def original_layout(model: ModelSection, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every key and shape of the original release's state dict for this architecture (original names).

    Args:
        model: the architecture (ResNet backbones only).
        num_classes: logits per query (91 for the COCO releases).

    Returns:
        ``{key: shape}`` with ``backbone.0.body.*`` keys, aliases included.
    """
    d, ff, levels = model.hidden_dim, model.dim_feedforward, model.num_feature_levels
    layout: dict[str, tuple[int, ...]] = {"transformer.level_embed": (levels, d)}
    for i in range(model.enc_layers):
        p = f"transformer.encoder.layers.{i}"
        layout |= _msda_keys(f"{p}.self_attn", d, model.nheads, levels, model.enc_n_points)
        layout |= _norm(f"{p}.norm1", d) | _linear(f"{p}.linear1", ff, d) | _linear(f"{p}.linear2", d, ff)
        layout |= _norm(f"{p}.norm2", d)
    for i in range(model.dec_layers):
        p = f"transformer.decoder.layers.{i}"
        layout |= _msda_keys(
            f"{p}.cross_attn", d, model.dec_nheads or model.nheads, levels, model.dec_n_points
        )
        layout |= {f"{p}.self_attn.in_proj_weight": (3 * d, d), f"{p}.self_attn.in_proj_bias": (3 * d,)}
        layout |= _linear(f"{p}.self_attn.out_proj", d, d)
        for name in ("norm1", "norm2", "norm3"):
            layout |= _norm(f"{p}.{name}", d)
        dec_ff = model.dec_dim_feedforward or ff
        layout |= _linear(f"{p}.linear1", dec_ff, d) | _linear(f"{p}.linear2", d, dec_ff)
    if model.two_stage:
        layout |= _linear("transformer.enc_output", d, d) | _norm("transformer.enc_output_norm", d)
        layout |= _linear("transformer.pos_trans", 2 * d, 2 * d) | _norm("transformer.pos_trans_norm", 2 * d)
    else:
        layout |= _linear("transformer.reference_points", 2, d)
        layout["query_embed.weight"] = (model.num_queries, 2 * d)
    for i in range(model.dec_layers + int(model.two_stage)):
        heads = {f"class_embed.{i}": num_classes}
        heads |= {f"bbox_embed.{i}.layers.{j}": (d if j < 2 else 4) for j in range(3)}
        aliases = {}
        if model.with_box_refine:
            aliases |= {f"transformer.decoder.{k}": v for k, v in heads.items() if k.startswith("bbox")}
        if model.two_stage:
            aliases |= {f"transformer.decoder.{k}": v for k, v in heads.items() if k.startswith("class")}
        for prefix, out_f in (heads | aliases).items():
            layout |= _linear(prefix, out_f, d)
    channels = _STAGE_CHANNELS["basic" if model.backbone in ("resnet_18", "resnet_34") else "bottleneck"]
    extra_in = channels[
        3
    ]  # the first extra level convolves the last stage, later ones the previous extra level
    for i, index in enumerate(model.return_interm_indices):
        if index <= 3:
            layout[f"input_proj.{i}.0.weight"] = (d, channels[index], 1, 1)
        else:
            layout[f"input_proj.{i}.0.weight"] = (d, extra_in, 3, 3)
            extra_in = d
        layout |= {f"input_proj.{i}.0.bias": (d,)} | _norm(f"input_proj.{i}.1", d)
    layout |= {ORIGINAL_BACKBONE_PREFIX + k: v for k, v in _resnet_keys(model.backbone).items()}
    return layout


def _args_dict(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return vars(args)
    if isinstance(args, Mapping):
        return dict(args)
    raise CheckpointError(f"'args' is a {type(args).__name__}, expected an argparse.Namespace")


def _backbone_from_args(name: Any) -> str:
    mapping = {f"resnet{n}": f"resnet_{n}" for n in (18, 34, 50, 101)}
    if name not in mapping:
        raise CheckpointError(f"args.backbone={name!r}: weight import supports {sorted(mapping)} only")
    return mapping[name]


def _layer_indices(state_dict: Mapping[str, Any], prefix: str) -> int:
    found = {int(k[len(prefix) :].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def _infer_from_shapes(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], list[str]]:
    """Architecture fields recoverable from tensor shapes, plus notes on what had to be assumed."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise CheckpointError(f"no 'args' and no '{key}' tensor: cannot infer the architecture")
        return tuple(sd[key].shape)

    levels, d = shape("transformer.level_embed")
    fields: dict[str, Any] = {"num_feature_levels": int(levels), "hidden_dim": int(d)}
    fields["enc_layers"] = _layer_indices(sd, "transformer.encoder.layers.")
    fields["dec_layers"] = _layer_indices(sd, "transformer.decoder.layers.")
    fields["dim_feedforward"] = shape("transformer.encoder.layers.0.linear1.weight")[0]
    fields["two_stage"] = "transformer.enc_output.weight" in sd
    fields["with_box_refine"] = any(k.startswith("transformer.decoder.bbox_embed.") for k in sd)
    heads = 8
    notes = [f"nheads={heads} (assumed)"]
    fields["nheads"] = heads
    for name, attn in (
        ("enc_n_points", "encoder.layers.0.self_attn"),
        ("dec_n_points", "decoder.layers.0.cross_attn"),
    ):
        rows = shape(f"transformer.{attn}.attention_weights.weight")[0]  # H * L * P
        if rows % (heads * levels):
            raise CheckpointError(
                f"transformer.{attn}.attention_weights has {rows} rows, not a multiple of 8 heads"
            )
        fields[name] = rows // (heads * levels)
    if "query_embed.weight" in sd:
        fields["num_queries"] = int(sd["query_embed.weight"].shape[0])
    else:
        notes.append("num_queries=300 (assumed)")
    bottleneck = f"{ORIGINAL_BACKBONE_PREFIX}layer1.0.conv3.weight" in sd
    blocks = _layer_indices(sd, f"{ORIGINAL_BACKBONE_PREFIX}layer3.")
    depth = {(True, 6): 50, (True, 23): 101, (False, 2): 18, (False, 6): 34}.get((bottleneck, blocks))
    if depth is None:
        raise CheckpointError(f"backbone with {blocks} layer3 blocks is not a ResNet-18/34/50/101")
    fields["backbone"] = f"resnet_{depth}"
    notes += ["dilation=False (assumed)", "dropout_ratio=0.1 (assumed)"]
    fields["dropout_ratio"] = 0.1
    return fields, notes


def _read_original(path: Path) -> dict[str, Any]:
    """Read a release file with the weights-only loader (:func:`safe_torch_load`: ``argparse.Namespace`` only)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: original checkpoint not found")
    raw = safe_torch_load(path, "cpu")
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{path}: expected a dict with a 'model' state dict, found a {type(raw).__name__}"
        )
    return raw


def _model_section_from_args(
    args: dict[str, Any], sd: Mapping[str, torch.Tensor]
) -> tuple[ModelSection, list[str]]:
    """The architecture from the release's ``args`` (or from shapes without them) and notes on assumptions."""
    if not args:
        fields, notes = _infer_from_shapes(sd)
    else:
        if args.get("masks"):
            raise CheckpointError("args.masks=True: segmentation checkpoints are not supported")
        fields, notes = {}, []
        for flag, name in _ARGS_TO_FIELDS.items():
            if flag in args:
                fields[name] = args[flag]
            elif flag in ORIGINAL_DEFAULTS:
                fields[name] = ORIGINAL_DEFAULTS[flag]
                notes.append(f"{name}={fields[name]} (original default)")
        fields["backbone"] = _backbone_from_args(args.get("backbone", ORIGINAL_DEFAULTS["backbone"]))
        if "lr_backbone" in args:
            fields["train_backbone"] = float(args["lr_backbone"]) > 0
    fields["return_interm_indices"] = interm_indices_for_levels(int(fields["num_feature_levels"]))
    fields["num_select"] = min(ORIGINAL_NUM_SELECT, int(fields.get("num_queries", 300)))
    try:
        return ModelSection(**fields), notes
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise CheckpointError(
            f"architecture read from the checkpoint is not valid: model.{where}: {first.get('msg')} "
            f"(got {first.get('input')!r})"
        ) from None


def import_original(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], ModelSection, int]:
    """Read an original Deformable DETR release checkpoint safely and map it to our keys.

    The architecture comes from the file's ``args`` (an ``argparse.Namespace``); without ``args``, it is
    inferred from tensor shapes, and what shapes cannot tell (heads, dilation, dropout, two-stage query count)
    is assumed and logged. Every tensor must be one the architecture has, with its shape, and vice versa.

    Args:
        path: a ``.pth`` file holding ``{"model": state_dict, "args": Namespace, ...}`` (or a bare state dict).

    Returns:
        ``(state_dict, model_section, num_classes)`` with our keys (``backbone.body.*``).

    Raises:
        CheckpointError: unsafe or unreadable file, unsupported architecture, or unknown / missing /
            misshapen tensors (listed).
    """
    file = Path(path)
    raw = _read_original(file)
    sd = raw.get("model", raw)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(
            f"{file}: 'model' is not a state dict of tensors (top-level keys: {sorted(raw)})"
        )
    if "class_embed.0.weight" not in sd:
        raise CheckpointError(
            f"{file}: no 'class_embed.0.weight': not a Deformable DETR detection checkpoint"
        )
    num_classes = int(sd["class_embed.0.weight"].shape[0])
    try:
        model, notes = _model_section_from_args(_args_dict(raw.get("args")), sd)
    except CheckpointError as err:
        raise CheckpointError(f"{file}: {err}") from None
    if notes:
        logger.warning(
            "%s: architecture not fully given by its args: %s; check before use", file, ", ".join(notes)
        )

    expected = original_layout(model, num_classes)
    unknown = [k for k in sd if k not in expected]
    missing = [k for k in expected if k not in sd]
    wrong = [
        f"{k}: file {list(sd[k].shape)} vs {list(v)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != v
    ]
    if unknown or missing or wrong:
        problems = describe_mismatch(missing, unknown, wrong).replace("unexpected keys", "unknown keys")
        raise CheckpointError(
            f"{file}: does not match the architecture in its args ({arch_summary(model)}): {problems}"
        )

    ours = {_to_our_key(k): v for k, v in sd.items()}
    return ours, model, num_classes


def _to_our_key(key: str) -> str:
    if key.startswith(ORIGINAL_BACKBONE_PREFIX):
        return OUR_BACKBONE_PREFIX + key[len(ORIGINAL_BACKBONE_PREFIX) :]
    return key


def arch_summary(model: ModelSection) -> str:
    """The architecture in a few words: backbone, levels, variant, queries, layers, width, heads."""
    variant = [f"{model.num_feature_levels} levels"]
    if model.with_box_refine:
        variant.append("box refine")
    if model.two_stage:
        variant.append("two-stage")
    return (
        f"{model.backbone}, {', '.join(variant)}, {model.num_queries} queries, "
        f"{model.enc_layers}+{model.dec_layers} layers, d={model.hidden_dim}, {model.nheads} heads"
    )


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Tensors of a Hugging Face model folder: safetensors (single or sharded) or pytorch_model.bin."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    try:
        if (folder / "model.safetensors").is_file():
            return load_file(folder / "model.safetensors")
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            merged: dict[str, torch.Tensor] = {}
            for shard in shards:
                merged |= load_file(folder / shard)
            return merged
        if (folder / "pytorch_model.bin").is_file():
            sd = safe_torch_load(folder / "pytorch_model.bin", "cpu")
            if not isinstance(sd, dict):
                raise CheckpointError(f"{folder / 'pytorch_model.bin'}: not a state dict")
            return sd
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{folder}: unreadable Hugging Face weights: {detail}") from None
    raise CheckpointError(
        f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _class_names_from_hf(config: Mapping[str, Any], num_classes: int) -> list[str] | None:
    id2label = config.get("id2label") or {}
    names = {int(k): str(v) for k, v in id2label.items() if str(k).isdigit() and 0 <= int(k) < num_classes}
    if not names or all(v == f"LABEL_{k}" for k, v in names.items()):
        return None
    return [names.get(i, "") for i in range(num_classes)]


#: ``hf:<org>/<name>[@<revision>]`` names a model on the Hugging Face Hub (e.g. ``hf:SenseTime/deformable-detr``).
HF_HUB_PREFIX = "hf:"
_HF_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
_HF_FILES += ["pytorch_model.bin"]


def is_hf_hub_id(value: str | os.PathLike[str]) -> bool:
    """True for ``hf:<org>/<name>[@<revision>]``."""
    return isinstance(value, str) and value.startswith(HF_HUB_PREFIX)


def resolve_hf_hub_id(ref: str) -> Path:
    """The local snapshot folder of ``hf:<org>/<name>[@<revision>]``, through huggingface_hub's cache.

    The cache is ``HF_HUB_CACHE`` (default ``~/.cache/huggingface/hub``); a model not in it is downloaded,
    unless ``HF_HUB_OFFLINE`` is set. Only the config and the weights are fetched.

    Raises:
        CheckpointError: one line naming the id when it is neither cached nor reachable.
    """
    repo_id, _, revision = ref[len(HF_HUB_PREFIX) :].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(f"{ref}: a Hugging Face Hub id is hf:<org>/<name>[@<revision>]")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{ref}: needs the huggingface_hub package (pip install huggingface_hub)"
        ) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
            local_files_only=offline,
            allow_patterns=_HF_FILES,
        )
    except Exception as err:  # huggingface_hub raises its own errors and requests' for the network
        why = (
            "is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
            if offline
            else "is neither in the Hugging Face cache nor downloadable"
        )
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{ref}: model {repo_id!r} {why} ({type(err).__name__}: {detail})") from None
    logger.info("%s -> %s", ref, folder)
    return Path(folder)


def import_hf(
    folder: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], ModelSection, int, list[str] | None]:
    """Read a Hugging Face ``DeformableDetrForObjectDetection`` folder (or ``hf:<org>/<name>`` Hub id, see
    :func:`resolve_hf_hub_id`) and convert it to our keys.

    Returns:
        ``(state_dict, model_section, num_classes, class_names)``.

    Raises:
        CheckpointError: missing config/weights, or weights the converter cannot map.
    """
    from ddetr.model.weights_hf import convert_hf_state_dict

    path = resolve_hf_hub_id(folder) if is_hf_hub_id(folder) else Path(folder)
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a Hugging Face model folder (config.json + weights)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file}: not valid JSON: {err}") from None
    sd, model, num_classes = convert_hf_state_dict(_read_hf_weights(path), config)
    return sd, model, num_classes, _class_names_from_hf(config, num_classes)
