"""The experiment spec, one pydantic model per section (docs/SPEC.md is the reference).

Field metadata lives here and only here: ranges (``ge``/``le``/``gt``), whether AutoML searches a field
(``automl``, with its own search range ``automl_range`` when narrower than the validation range), and
whether a field is inert (accepted so that TAO spec files load, without effect).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


def spec_field(
    default: Any,
    *,
    description: str = "",
    automl: bool = False,
    automl_range: tuple[float, float] | None = None,
    condition: str = "",
    inert: bool = False,
    **constraints: Any,
) -> Any:
    """A pydantic ``Field`` carrying ddetr's metadata in ``json_schema_extra``."""
    extra: dict[str, Any] = {}
    if automl:
        extra["automl"] = True
    if automl_range is not None:
        extra["automl_range"] = list(automl_range)
    if condition:
        extra["condition"] = condition
    if inert:
        extra["inert"] = True
    kwargs: dict[str, Any] = dict(constraints)
    if isinstance(default, (list, dict)):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
    else:
        kwargs["default"] = default
    return Field(description=description, json_schema_extra=extra or None, **kwargs)


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelSection(Section):
    """``model``: the architecture and the loss coefficients."""

    backbone: str = spec_field(
        "resnet_50",
        description="resnet_18/34/50/101 (torchvision), gc_vit_xxtiny..gc_vit_large (timm), or timm:<name>",
    )
    pretrained_backbone_path: str = spec_field("", description="backbone-only weights (torchvision or timm state dict)")
    num_queries: int = spec_field(300, ge=1, automl=True, automl_range=(100, 900), description="object queries")
    num_feature_levels: int = spec_field(4, ge=1, le=5, description="feature levels fed to the transformer")
    return_interm_indices: list[int] = spec_field(
        [1, 2, 3, 4], description="backbone stages used (0..3); 4 = extra stride-2 3x3 conv on the last stage"
    )
    with_box_refine: bool = spec_field(True, description="iterative bounding box refinement")
    two_stage: bool = spec_field(False, description="(+) two-stage variant: encoder proposals as queries")
    hidden_dim: int = spec_field(256, ge=8, description="transformer width")
    nheads: int = spec_field(8, ge=1, description="attention heads")
    enc_layers: int = spec_field(6, ge=1, le=12, automl=True)
    dec_layers: int = spec_field(6, ge=1, le=12, automl=True)
    dim_feedforward: int = spec_field(1024, ge=1)
    dropout_ratio: float = spec_field(0.3, ge=0.0, lt=1.0)
    enc_n_points: int = spec_field(4, ge=1)
    dec_n_points: int = spec_field(4, ge=1)
    aux_loss: bool = spec_field(True, description="losses on every decoder layer")
    cls_loss_coef: float = spec_field(2.0, ge=0.0, description="focal loss weight and matcher class cost")
    bbox_loss_coef: float = spec_field(5.0, ge=0.0, description="L1 loss weight and matcher L1 cost")
    giou_loss_coef: float = spec_field(2.0, ge=0.0, description="GIoU loss weight and matcher GIoU cost")
    focal_alpha: float = spec_field(0.25, ge=0.0, le=1.0)
    num_select: int = spec_field(
        300,
        ge=1,
        automl=True,
        automl_range=(1, 1000),
        condition="<= num_queries and < num_queries * num_classes",
        description="detections kept per image by post-processing",
    )
    dilation: bool = spec_field(False, description="dilated last ResNet stage (DC5)")
    train_backbone: bool = spec_field(True)
    clip_max_norm: float = spec_field(0.1, inert=True)
    loss_types: list[str] = spec_field(["labels", "boxes"], inert=True)
    backbone_names: list[str] = spec_field(["backbone.0"], inert=True)
    linear_proj_names: list[str] = spec_field(["reference_points", "sampling_offsets"], inert=True)
    dld_model_dir_path: str = spec_field("", inert=True)

    # Fields that define the weights' shapes and the forward pass: a checkpoint's values win over a spec's.
    ARCHITECTURE_FIELDS: ClassVar[tuple[str, ...]] = (
        "backbone",
        "num_queries",
        "num_feature_levels",
        "return_interm_indices",
        "with_box_refine",
        "two_stage",
        "hidden_dim",
        "nheads",
        "enc_layers",
        "dec_layers",
        "dim_feedforward",
        "enc_n_points",
        "dec_n_points",
        "dilation",
    )


BackboneName = Literal["resnet_18", "resnet_34", "resnet_50", "resnet_101"]
