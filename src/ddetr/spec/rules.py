"""The cross-field rules of the spec (docs/SPEC.md), applied by :func:`ddetr.spec.load.load_spec`.

Every rule that needs the spec alone lives here, so that a broken spec fails in one line when it loads, before
any folder is created or any data is read. Rules that need files, data or an installed library (does timm
know this model name? does the annotation file hold this category id?) stay with the code that reads them.

The backbone names the spec accepts are defined here too; ``ddetr.model.backbone`` builds them.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from ddetr.errors import SpecError
from ddetr.spec.sections import MISSING, ModelSection, Spec, is_set

__all__ = [
    "ARTEFACT_SUFFIXES",
    "BACKBONE_STAGES",
    "BASIC_BLOCK_RESNETS",
    "GC_VIT_BACKBONES",
    "GROUP_NORM_GROUPS",
    "MODEL_BUILDING_ACTIONS",
    "REQUIRED_FIELDS",
    "RESNET_BACKBONES",
    "TIMM_PREFIX",
    "TRAINING_ACTIONS",
    "UNAVAILABLE_BACKBONES",
    "VALID_BACKBONE_NAMES",
    "architecture_from_artefact",
    "check_backbone",
    "check_backbone_name",
    "check_model_section",
    "check_required",
    "check_rules",
]

# ------------------------------------------------------------------------------------------ backbone names

RESNET_BACKBONES: tuple[str, ...] = ("resnet_18", "resnet_34", "resnet_50", "resnet_101")  # torchvision
BASIC_BLOCK_RESNETS: tuple[str, ...] = ("resnet_18", "resnet_34")  # basic blocks: no dilated last stage
# TAO's GC-ViT names -> timm's.
GC_VIT_BACKBONES: dict[str, str] = {
    "gc_vit_xxtiny": "gcvit_xxtiny",
    "gc_vit_xtiny": "gcvit_xtiny",
    "gc_vit_tiny": "gcvit_tiny",
    "gc_vit_small": "gcvit_small",
    "gc_vit_base": "gcvit_base",
}
# TAO names without a counterpart here: timm has no "large" GC-ViT (TAO's are its own configurations).
UNAVAILABLE_BACKBONES: tuple[str, ...] = ("gc_vit_large", "gc_vit_large_384")
TIMM_PREFIX = "timm:"  # "timm:<name>": any timm model that gives stride 4/8/16/32 features
VALID_BACKBONE_NAMES: tuple[str, ...] = (*RESNET_BACKBONES, *GC_VIT_BACKBONES, f"{TIMM_PREFIX}<name>")

# Every backbone has four stages (strides 4, 8, 16, 32): return_interm_indices 0..3. Indices from 4 on are
# extra stride-2 3x3 conv levels on top of the last stage.
BACKBONE_STAGES = 4
# The detector's input projections use GroupNorm with this many groups: hidden_dim must be a multiple of it.
GROUP_NORM_GROUPS = 32

# Actions that build the model from the spec's model section; the others take the architecture from a
# checkpoint (or build no model), so only the model rules docs/SPEC.md lists for every action apply to them.
MODEL_BUILDING_ACTIONS: tuple[str, ...] = ("train", "automl")
TRAINING_ACTIONS: tuple[str, ...] = ("train", "automl")  # the actions check_rules' warnings are about
# Model files whose architecture is fixed in the file itself (no model section is read for them).
ARTEFACT_SUFFIXES: tuple[str, ...] = (".onnx", ".engine", ".plan", ".trt")


def architecture_from_artefact(spec: Spec, action: str | None) -> bool:
    """True when ``action`` takes the architecture from an ONNX file or TensorRT engine, not from the spec.

    ``gen_trt_engine`` reads only its ONNX file. ``evaluate`` and ``inference`` run an ONNX file or engine
    when their model file (``checkpoint``, else ``trt_engine``) is one, or when no file is given but
    ``trt_engine`` is left ``???`` (TAO's deploy templates; the action then stops naming the field). Their
    spec's architecture fields are not checked against each other then: the artefact decides.
    """
    if action == "gen_trt_engine":
        return True
    if action not in ("evaluate", "inference"):
        return False
    section = getattr(spec, action)
    model_file = next((v for v in (section.checkpoint, section.trt_engine) if is_set(v)), "")
    if not model_file:
        return section.trt_engine.strip() == MISSING
    return PurePath(model_file.strip()).suffix.lower() in ARTEFACT_SUFFIXES


def check_backbone(model: ModelSection) -> None:
    """``model.backbone`` names a backbone ddetr builds, and ``model.dilation`` suits it.

    Raises:
        SpecError: an unknown name, a TAO name without a counterpart here, or dilation on a basic-block ResNet.
    """
    check_backbone_name(model.backbone)
    name = model.backbone
    if model.dilation and name in BASIC_BLOCK_RESNETS:
        raise SpecError(
            f"model.dilation: true is not supported by {name} (basic blocks cannot dilate); "
            "use resnet_50/resnet_101 or set model.dilation=false."
        )


def check_backbone_name(name: str) -> None:
    """``name`` is a backbone ddetr builds (a TAO name without a counterpart here is refused with the valid ones).

    Raises:
        SpecError: an unknown name or a TAO name that is not available here.
    """
    if name in UNAVAILABLE_BACKBONES:
        raise SpecError(
            f"model.backbone: '{name}' is not available (timm has no such GC-ViT); valid names are "
            f"{', '.join(VALID_BACKBONE_NAMES)}."
        )
    timm_name = name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX)
    if name not in RESNET_BACKBONES and name not in GC_VIT_BACKBONES and not timm_name:
        raise SpecError(
            f"model.backbone: unknown backbone '{name}'; valid names are {', '.join(VALID_BACKBONE_NAMES)}."
        )


def _check_interm_indices(model: ModelSection) -> None:
    """``return_interm_indices``: one entry per feature level, stages 0..3 in order, then 4, 5, ..."""
    indices = list(model.return_interm_indices)
    if len(indices) != model.num_feature_levels:
        raise SpecError(
            f"model.return_interm_indices {indices} has {len(indices)} entries but model.num_feature_levels is "
            f"{model.num_feature_levels}; they must be equal, e.g. model.num_feature_levels={len(indices)}"
        )
    stages = [i for i in indices if i < BACKBONE_STAGES]
    extra = len(indices) - len(stages)
    if (
        not stages
        or min(indices) < 0
        or stages != sorted(set(stages))
        or indices != stages + list(range(BACKBONE_STAGES, BACKBONE_STAGES + extra))
    ):
        raise SpecError(
            f"model.return_interm_indices: {indices} is invalid; give increasing backbone stages in 0..3 "
            "followed by 4, 5, ... for extra stride-2 levels, e.g. [1, 2, 3, 4]."
        )


def _check_num_select(model: ModelSection, num_classes: int) -> None:
    limit = model.num_queries * num_classes
    if model.num_select >= limit:
        fix = (
            f"lower it, e.g. model.num_select={min(300, limit - 1)}"
            if limit > 1
            else "raise model.num_queries"
        )
        raise SpecError(
            f"model.num_select: {model.num_select} must be < model.num_queries * dataset.num_classes "
            f"= {model.num_queries} * {num_classes} = {limit}; {fix}"
        )


def check_model_section(model: ModelSection, num_classes: int) -> None:
    """Every rule about the architecture, before anything is built.

    Run by :func:`check_rules` for the actions that build the model from the spec, and by
    ``DeformableDETR.from_config`` for a model section made in Python.

    Args:
        model: The spec's ``model`` section.
        num_classes: ``dataset.num_classes`` (the width of the class logits).

    Raises:
        SpecError: one line naming the fields and their values.
    """
    _check_interm_indices(model)
    if num_classes < 1:
        raise SpecError(f"dataset.num_classes: must be >= 1, got {num_classes}.")
    _check_num_select(model, num_classes)
    if model.hidden_dim % model.nheads != 0:
        raise SpecError(
            f"model.hidden_dim: {model.hidden_dim} must be divisible by model.nheads={model.nheads}."
        )
    if model.dec_nheads is not None and model.hidden_dim % model.dec_nheads != 0:
        raise SpecError(
            f"model.hidden_dim: {model.hidden_dim} must be divisible by model.dec_nheads={model.dec_nheads}."
        )
    if model.hidden_dim % GROUP_NORM_GROUPS != 0:
        raise SpecError(
            f"model.hidden_dim: {model.hidden_dim} must be a multiple of {GROUP_NORM_GROUPS} "
            f"(the input projections use GroupNorm({GROUP_NORM_GROUPS}))."
        )
    if model.two_stage and not model.with_box_refine:
        raise SpecError(
            "model.two_stage: true needs model.with_box_refine: true (as in the original release); "
            "set model.with_box_refine=true."
        )
    check_backbone(model)


def _questionable_values(spec: Spec) -> list[str]:
    """Values in the ranges TAO's schemas allow that defeat training (accepted, named in one warning line)."""
    optim, model = spec.train.optim, spec.model
    found = []
    if optim.lr == 0:
        found.append("train.optim.lr=0 (the transformer and the heads do not learn)")
    if optim.lr_decay == 0:
        found.append("train.optim.lr_decay=0 (the learning rate drops to 0 at the first decay)")
    if model.dropout_ratio == 1:
        found.append("model.dropout_ratio=1 (every transformer hidden unit is dropped in training)")
    if not 0 <= model.focal_alpha <= 1:
        found.append(
            f"model.focal_alpha={model.focal_alpha:g} outside 0..1 (above 1 the negatives weigh negatively; "
            "below 0 the loss stops weighting classes but the matcher does not)"
        )
    return found


def check_rules(spec: Spec, action: str | None = None) -> list[str]:
    """Apply the cross-field rules of docs/SPEC.md for one action.

    Every action checks the random crop bounds and ``dataset.eval_class_ids``, and ``model.num_select``
    against ``num_queries * num_classes`` and ``return_interm_indices`` against ``num_feature_levels``. The actions that build the model from the
    spec (:data:`MODEL_BUILDING_ACTIONS`, and ``None``: unknown) also check every other architecture rule
    (:func:`check_model_section`); the others take the architecture from a checkpoint. Actions that take it
    from an ONNX file or engine (:func:`architecture_from_artefact`) check no model rule.

    Args:
        spec: The validated spec.
        action: The action the spec is for, ``None`` when unknown (every rule applies).

    Returns:
        Warning lines (the caller logs them).

    Raises:
        SpecError: a rule is broken.
    """
    m, d = spec.model, spec.dataset
    if action is None or action in MODEL_BUILDING_ACTIONS:
        check_model_section(m, d.num_classes)
    elif not architecture_from_artefact(spec, action):
        _check_interm_indices(m)
        _check_num_select(m, d.num_classes)
    aug = d.augmentation
    if aug.train_random_crop_max <= aug.train_random_crop_min:
        raise SpecError(
            f"dataset.augmentation.train_random_crop_max ({aug.train_random_crop_max}) must be > "
            f"dataset.augmentation.train_random_crop_min ({aug.train_random_crop_min}); raise the max or lower the min"
        )
    if d.eval_class_ids is not None:
        out = [i for i in d.eval_class_ids if not 0 <= i < d.num_classes]
        if out:
            raise SpecError(
                f"dataset.eval_class_ids {d.eval_class_ids}: ids {out} are outside 0..{d.num_classes - 1} "
                f"(dataset.num_classes = {d.num_classes})"
            )
    warnings: list[str] = []
    questionable = _questionable_values(spec)
    if questionable:
        warnings.append(
            "values TAO's schema accepts that make little sense for training: " + "; ".join(questionable)
        )
    optim, n_epochs = spec.train.optim, spec.train.num_epochs
    if optim.lr_scheduler == "MultiStep" and optim.lr_steps and all(s >= n_epochs for s in optim.lr_steps):
        warnings.append(
            f"train.optim.lr_steps {optim.lr_steps} are all >= train.num_epochs ({n_epochs}): "
            "the learning rate never decays"
        )
    return warnings


# ------------------------------------------------------------------------------------- required fields

# The fields each action needs. A tuple names alternatives (either is enough); "[]" stands for every entry of
# a list of data sources. Only TAO's ``???`` marker is checked here; an empty value is reported by the action.
REQUIRED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "train": (
        ("dataset.train_data_sources[].image_dir",),
        ("dataset.train_data_sources[].json_file",),
        ("dataset.val_data_sources[].image_dir",),
        ("dataset.val_data_sources[].json_file",),
    ),
    "evaluate": (
        ("evaluate.checkpoint", "evaluate.trt_engine"),
        ("dataset.test_data_sources.image_dir",),
        ("dataset.test_data_sources.json_file",),
    ),
    "inference": (
        ("inference.checkpoint", "inference.trt_engine"),
        ("dataset.infer_data_sources.image_dir",),
    ),
    "export": (("export.checkpoint",),),
    "quantize": (("quantize.model_path",),),
    "gen_trt_engine": (("gen_trt_engine.onnx_file",),),
}
REQUIRED_FIELDS["automl"] = REQUIRED_FIELDS["train"]


def _values(spec: Spec, dotted: str) -> list[tuple[str, Any]]:
    """``[(path, value)]`` of a dotted field; ``a[].b`` gives one pair per entry of the list ``a``."""
    head, sep, tail = dotted.partition("[].")
    if not sep:
        return [(dotted, spec.get(dotted))]
    out = []
    for i, entry in enumerate(spec.get(head)):
        value: Any = entry
        for part in tail.split("."):
            value = getattr(value, part)
        out.append((f"{head}[{i}].{tail}", value))
    return out


def _is_missing(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_missing(v) for v in value)
    return isinstance(value, str) and value.strip() == MISSING


def check_required(spec: Spec, action: str) -> None:
    """The fields ``action`` needs are not left as TAO's ``???`` ("required, not given yet").

    Derived fields are not required: ``export.onnx_file``, ``gen_trt_engine.trt_engine`` and
    ``gen_trt_engine.tensorrt.calibration.cal_cache_file`` left ``???`` are named after the input file, in the
    action's results folder. Optional fields left ``???`` count as not set.

    Raises:
        SpecError: one line naming the first required field (or pair of alternatives) still ``???``.
    """
    for group in REQUIRED_FIELDS.get(action, ()):
        pairs = [pair for name in group for pair in _values(spec, name)]
        if len(group) > 1:
            if all(_is_missing(v) or not is_set(v) for _, v in pairs) and any(
                _is_missing(v) for _, v in pairs
            ):
                names = " or ".join(p for p, _ in pairs)
                raise SpecError(
                    f"{action} needs {names}, but the spec leaves them ??? (required, not given yet); "
                    f"pass {pairs[0][0]}=PATH"
                )
            continue
        for path, value in pairs:
            if _is_missing(value):
                key = path.split("[", 1)[0]
                raise SpecError(
                    f"{path} is required but the spec leaves it ??? (not given yet); set it in the spec or pass "
                    f"{key}=..."
                )
