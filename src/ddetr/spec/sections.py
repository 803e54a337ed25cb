"""The experiment spec, one pydantic model per section (docs/SPEC.md is the reference).

Field metadata lives here and only here: ranges (``ge``/``le``/``gt``), whether AutoML searches a field
(``automl``, with its own search range ``automl_range`` when narrower than the validation range) or must never
search it (``never_searched``, with the reason), and whether a field is inert (accepted so that TAO spec files
load, without effect). The cross-field rules are in ``spec/rules.py``.

Conventions shared by every section:

- An empty string means "not set" (TAO templates write ``''`` for unset paths).
- ``???`` (OmegaConf's missing marker) means "required, not given yet"; it is kept as a string and an action
  that needs the value calls :func:`require`, which raises :class:`~ddetr.errors.SpecError` naming the field.
- ``null`` for a field whose default is not ``null`` (TAO's ``Optional[str] = None``) means its default.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ddetr.errors import SpecError

MISSING = "???"
# Feed-forward activations of the transformer layers: Hugging Face's ``activation_function`` names
# (ddetr.model.transformer.FFN_ACTIVATIONS implements the parameter-free ones, LEARNED_ACTIVATIONS prelu and
# xielu, whose learned parameters each layer holds)
FfnActivation = Literal[
    "relu",
    "gelu",
    "gelu_python",
    "gelu_new",
    "gelu_fast",
    "gelu_accurate",
    "gelu_pytorch_tanh",
    "gelu_python_tanh",
    "gelu_10",
    "quick_gelu",
    "silu",
    "swish",
    "mish",
    "relu2",
    "relu6",
    "leaky_relu",
    "hardswish",
    "laplace",
    "linear",
    "sigmoid",
    "tanh",
    "sqrtsoftplus",
    "prelu",
    "xielu",
]
# ImageNet statistics: the default normalisation of every model (written here only)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Upper bounds of the size fields: far above any real model or image, low enough that a typo (2**40) is a
#: one-line spec error instead of an out-of-memory crash.
MAX_WIDTH = 8192  # hidden_dim
MAX_FEEDFORWARD = 65536  # dim_feedforward
MAX_QUERIES = 10_000  # num_queries, num_select
MAX_POINTS = 64  # enc_n_points, dec_n_points
MAX_HEADS = 256  # nheads
MAX_LAYERS = 256  # enc_layers, dec_layers (TAO sets no upper bound; AutoML searches 1..12)
MAX_SIDE = 16384  # image sides in pixels (resizes, crops)
MAX_CLASSES = 100_000  # num_classes
#: one image side in pixels, as list items take it
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]


def spec_field(
    default: Any,
    *,
    description: str = "",
    automl: bool = False,
    automl_range: tuple[float, float | None] | None = None,
    condition: str = "",
    never_searched: str = "",
    inert: bool = False,
    **constraints: Any,
) -> Any:
    """A pydantic ``Field`` carrying ddetr's metadata in ``json_schema_extra``.

    Args:
        default: The default value. Lists, dicts and sections are deep-copied per instance.
        description: One line shown in generated templates and schemas.
        automl: AutoML searches this field by default.
        automl_range: ``(low, high)`` search range when narrower than the validation range;
            ``high`` may be ``None`` for an open end.
        condition: An extra constraint AutoML must respect (e.g. ``"> train_random_crop_min"``).
        never_searched: Why AutoML never searches this field, even when ``automl.hyperparameters`` names it
            (empty: it may be searched).
        inert: Accepted so that TAO spec files load; has no effect (the loader warns when it is set).
        **constraints: pydantic constraints (``ge``, ``le``, ``gt``, ``lt``, ...).
    """
    extra: dict[str, Any] = {}
    if automl:
        extra["automl"] = True
    if automl_range is not None:
        extra["automl_range"] = list(automl_range)
    if condition:
        extra["condition"] = condition
    if never_searched:
        extra["never_searched"] = never_searched
    if inert:
        extra["inert"] = True
    kwargs: dict[str, Any] = dict(constraints)
    if isinstance(default, BaseModel):
        kwargs["default_factory"] = lambda d=default: d.model_copy(deep=True)
    elif isinstance(default, (list, dict)):
        kwargs["default_factory"] = lambda d=default: copy.deepcopy(d)
    else:
        kwargs["default"] = default
    return Field(description=description, json_schema_extra=extra or None, **kwargs)


def field_meta(section: type[BaseModel], name: str) -> dict[str, Any]:
    """ddetr metadata of one field (``automl``, ``automl_range``, ``condition``, ``never_searched``, ...)."""
    extra = section.model_fields[name].json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors, assignments are validated.

    ``null`` for a field whose default is not ``null`` becomes the default, and ``???`` for a field whose
    default is not a string becomes the default too (only string fields can carry the marker).
    """

    # allow_inf_nan=False: inf and NaN (also written as strings) are refused in every float field
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _nulls_to_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            info = cls.model_fields.get(name) if isinstance(name, str) else None
            if info is None:
                continue
            default = info.get_default(call_default_factory=True)
            if value is None and default is not None:
                out[name] = default
            elif value == MISSING and not isinstance(default, str) and default is not None:
                out[name] = default
        return out


class ModelSection(Section):
    """``model``: the architecture and the loss coefficients."""

    backbone: str = spec_field(
        "resnet_50",
        description="resnet_18/34/50/101 (torchvision), gc_vit_xxtiny..gc_vit_base (timm), or timm:<name>",
    )
    pretrained_backbone_path: str = spec_field(
        "", description="backbone-only weights (torchvision or timm state dict)"
    )
    num_queries: int = spec_field(
        300, ge=1, le=MAX_QUERIES, automl=True, automl_range=(100, 900), description="object queries"
    )
    num_feature_levels: int = spec_field(
        4,
        ge=1,
        le=5,
        never_searched="must equal len(model.return_interm_indices)",
        description="feature levels fed to the transformer",
    )
    return_interm_indices: list[int] = spec_field(
        [1, 2, 3, 4],
        never_searched="must match model.num_feature_levels",
        description="backbone stages used (0..3); 4 = extra stride-2 3x3 conv on the last stage",
    )
    with_box_refine: bool = spec_field(True, description="iterative bounding box refinement")
    two_stage: bool = spec_field(False, description="(+) two-stage variant: encoder proposals as queries")
    hidden_dim: int = spec_field(
        256,
        ge=8,
        le=MAX_WIDTH,
        never_searched="must stay a multiple of 32 and of model.nheads",
        description="transformer width",
    )
    nheads: int = spec_field(
        8, ge=1, le=MAX_HEADS, never_searched="must divide model.hidden_dim", description="attention heads"
    )
    dec_nheads: int | None = spec_field(
        None,
        ge=1,
        le=MAX_HEADS,
        never_searched="must divide model.hidden_dim",
        description="(+) decoder attention heads; null: nheads (Hugging Face's decoder_attention_heads)",
    )
    enc_layers: int = spec_field(6, ge=1, le=MAX_LAYERS, automl=True, automl_range=(1, 12))
    dec_layers: int = spec_field(6, ge=1, le=MAX_LAYERS, automl=True, automl_range=(1, 12))
    dim_feedforward: int = spec_field(1024, ge=1, le=MAX_FEEDFORWARD)
    dec_dim_feedforward: int | None = spec_field(
        None,
        ge=1,
        le=MAX_FEEDFORWARD,
        description="(+) decoder feed-forward width; null: dim_feedforward (Hugging Face's decoder_ffn_dim)",
    )
    activation: FfnActivation = spec_field(
        "relu",
        description="(+) feed-forward activation of the encoder and decoder layers (Hugging Face's "
        "activation_function; prelu and xielu have learned parameters in each layer)",
    )
    position_embedding: Literal["sine", "learned"] = spec_field(
        "sine",
        description="(+) position embedding of the feature maps: sine (the original) or learned row/column "
        "tables of 50 positions, feature maps at most 50x50 (Hugging Face's position_embedding_type)",
    )
    dropout_ratio: float = spec_field(
        0.3, ge=0.0, le=1.0, description="1 warns: every hidden unit is dropped"
    )
    enc_n_points: int = spec_field(4, ge=1, le=MAX_POINTS)
    dec_n_points: int = spec_field(4, ge=1, le=MAX_POINTS)
    aux_loss: bool = spec_field(True, description="losses on every decoder layer")
    cls_loss_coef: float = spec_field(2.0, ge=0.0, description="focal loss weight and matcher class cost")
    bbox_loss_coef: float = spec_field(5.0, ge=0.0, description="L1 loss weight and matcher L1 cost")
    giou_loss_coef: float = spec_field(2.0, ge=0.0, description="GIoU loss weight and matcher GIoU cost")
    focal_alpha: float = spec_field(
        0.25, description="focal loss weight of the positive class; any value (as TAO), outside 0..1 warns"
    )
    num_select: int = spec_field(
        300,
        ge=1,
        le=MAX_QUERIES,
        automl=True,
        automl_range=(1, 1000),
        condition="<= num_queries and < num_queries * num_classes",
        description="detections kept per image by post-processing",
    )
    dilation: bool = spec_field(False, description="dilated last ResNet stage (DC5)")
    freeze_backbone_bn: bool = spec_field(
        True,
        description="(+) frozen batch norm and frozen stem/layer1, the original recipe for a pretrained backbone; "
        "false: live batch norm and every backbone layer trained (a backbone trained from scratch)",
    )
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
        "dec_nheads",
        "enc_layers",
        "dec_layers",
        "dim_feedforward",
        "dec_dim_feedforward",
        "activation",
        "position_embedding",
        "enc_n_points",
        "dec_n_points",
        "dilation",
    )


class WandbSection(Section):
    """``wandb``: Weights & Biases logging of training (metrics, the spec, sample pictures, the checkpoint).

    Needs the optional ``wandb`` package (``pip install 'ddetr[wandb]'``). Offline (``WANDB_MODE=offline``,
    or no W&B API key) the run is written under ``<results_dir>/train/wandb/`` for a later ``wandb sync``.
    """

    enable: bool = spec_field(False, description="log training to Weights & Biases (TAO's default is true)")
    project: str = spec_field("TAO Toolkit", description="W&B project")
    entity: str = spec_field("", description="W&B team or user; empty: the account's default")
    tags: list[str] = spec_field(["training", "tao-toolkit"])
    reinit: bool = spec_field(False, description="finish a W&B run already open in this process first")
    sync_tensorboard: bool = spec_field(False, description="W&B also copies the TensorBoard event files")
    save_code: bool = spec_field(False, description="W&B saves the main script")
    name: str = spec_field("TAO Toolkit training experiment", description="the run's display name")
    run_id: str = spec_field("", description="resume (or create) the W&B run with this id; empty: a new id")
    group: str = spec_field("", description="W&B run group")


class DataSource(Section):
    """One annotated image set: images plus a COCO json file."""

    image_dir: str = spec_field(
        "", description="folder, archive (.tar/.tar.gz/.tgz/.zip) or URL of the images"
    )
    json_file: str = spec_field("", description="COCO annotation file (local or remote)")


class InferDataSource(Section):
    """Images to run inference on, and the class names."""

    image_dir: list[str] | str = spec_field([""], description="one or more image folders, archives or URLs")
    classmap: str = spec_field(
        "", description="text file, one class name per line; line i is category id i+1"
    )


class AugmentationSection(Section):
    """``dataset.augmentation``: train and test image transforms."""

    scales: list[Side] = spec_field(
        [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
        min_length=1,
        never_searched="a list of sizes",
        description="random shortest-side resize sizes (at least one)",
    )
    input_mean: list[float] = spec_field(list(IMAGENET_MEAN), description="per-channel RGB mean")
    input_std: list[float] = spec_field(list(IMAGENET_STD), description="per-channel RGB std")
    train_random_resize: list[Side] = spec_field(
        [400, 500, 600], min_length=1, description="resize before the random crop (at least one)"
    )
    horizontal_flip_prob: float = spec_field(0.5, ge=0.0, le=1.0, automl=True)
    train_random_crop_min: int = spec_field(384, ge=1, le=MAX_SIDE, automl=True, automl_range=(32, None))
    train_random_crop_max: int = spec_field(
        600,
        ge=1,
        le=MAX_SIDE,
        automl=True,
        automl_range=(32, 1333),
        condition="> train_random_crop_min",
        description="must be > train_random_crop_min",
    )
    random_resize_max_size: int = spec_field(
        1333, ge=1, le=MAX_SIDE, description="longest side cap after resizing"
    )
    test_random_resize: int = spec_field(
        800,
        ge=1,
        le=MAX_SIDE,
        never_searched="trials must be scored at the same size",
        description="shortest side at evaluation and inference",
    )
    fixed_padding: bool = spec_field(
        True, inert=True, description="TAO: pad every batch to the largest possible size"
    )
    fixed_random_crop: int | None = spec_field(
        None, ge=1, le=MAX_SIDE, description="square large-scale-jitter crop size"
    )
    pad_size_divisor: int | None = spec_field(
        None, ge=1, inert=True, description="TAO: pad evaluation images to a multiple of this size"
    )


class ArchiveLimitsSection(Section):
    """``dataset.archive_limits`` (+): what an image archive may unpack to before it is refused.

    Checked on the sizes the archive declares before anything is written, and on the bytes actually written
    while unpacking (so a header that lies is caught too). The defaults let real datasets through and stop
    archive bombs.
    """

    max_unpacked_bytes: int = spec_field(
        200 * 10**9,
        ge=1,
        description="total bytes an archive may unpack to (default 200 GB)",
    )
    max_members: int = spec_field(
        10_000_000,
        ge=1,
        description="entries (files, folders, links) an archive may hold",
    )
    max_ratio: float = spec_field(
        200.0,
        gt=0,
        allow_inf_nan=False,
        description="unpacked bytes / archive file bytes",
    )


def _wrap_single_source(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


class DatasetSection(Section):
    """``dataset``: where the images and annotations are, and how they are loaded."""

    num_classes: int = spec_field(
        91,
        ge=1,
        le=MAX_CLASSES,
        never_searched="a property of the data",
        description="largest category id + 1 (id 0 unused)",
    )
    eval_class_ids: list[int] | None = spec_field(
        None,
        never_searched="decides what the metric measures",
        description="category ids COCOeval scores; null = all",
    )
    batch_size: int = spec_field(4, ge=1, automl=True, automl_range=(1, None), description="per device")
    workers: int = spec_field(
        8,
        ge=0,
        never_searched="changes speed, not accuracy",
        description="data loader processes; capped to the machine's cores",
    )
    pin_memory: bool = spec_field(True)
    dataset_type: str = spec_field("serialized", inert=True)
    train_sampler: str = spec_field("default_sampler", inert=True)
    train_data_sources: list[DataSource] = spec_field([DataSource()], description="concatenated")
    val_data_sources: list[DataSource] = spec_field([DataSource()], description="concatenated")
    test_data_sources: DataSource = spec_field(DataSource(), description="evaluate's data")
    infer_data_sources: InferDataSource = spec_field(InferDataSource(), description="inference's images")
    quant_calibration_data_sources: DataSource = spec_field(
        DataSource(), description="quantize's calibration data"
    )
    augmentation: AugmentationSection = spec_field(AugmentationSection())
    archive_limits: ArchiveLimitsSection = spec_field(
        ArchiveLimitsSection(), description="(+) limits on unpacking image archives"
    )

    _wrap = field_validator("train_data_sources", "val_data_sources", mode="before")(_wrap_single_source)


class CudnnSection(Section):
    """``train.cudnn``: cuDNN's autotuner and deterministic algorithms (Lightning's ``benchmark``/``deterministic``)."""

    benchmark: bool = spec_field(
        False, description="cuDNN autotuner: fastest convolution algorithms for fixed input sizes"
    )
    deterministic: bool = spec_field(
        True,
        description="deterministic cuDNN and PyTorch algorithms; an op without one warns instead of failing",
    )


class OptimSection(Section):
    """``train.optim``: optimizer and learning-rate schedule."""

    optimizer: Literal["AdamW", "SGD"] = spec_field("AdamW")
    monitor_name: Literal["val_loss", "train_loss", "val_mAP", "val_mAP50"] = spec_field(
        "val_loss",
        never_searched="steers the learning-rate schedule by a metric, not a hyperparameter of the model",
        description="the metric lr_scheduler=ReduceLROnPlateau watches (TAO: the scheduler's monitor)",
    )
    lr: float = spec_field(
        2e-4,
        ge=0.0,
        automl=True,
        automl_range=(0.0, 0.01),
        condition="> 0",
        description="0 warns: nothing learns",
    )
    lr_backbone: float = spec_field(
        2e-5,
        ge=0.0,
        automl=True,
        automl_range=(0.0, 0.001),
        condition="> 0",
        description="0 freezes the backbone",
    )
    lr_linear_proj_mult: float = spec_field(
        0.1,
        ge=0.0,
        automl=True,
        automl_range=(0.0, 1.0),
        condition="> 0",
        description="lr multiplier for reference_points and sampling_offsets",
    )
    momentum: float = spec_field(
        0.9, ge=0.0, le=1.0, automl=True, automl_range=(0.0, 1.0), condition="> 0", description="SGD only"
    )
    weight_decay: float = spec_field(1e-4, ge=0.0, automl=True, automl_range=(0.0, 0.1), condition="> 0")
    lr_scheduler: Literal["MultiStep", "StepLR", "ReduceLROnPlateau"] = spec_field(
        "MultiStep",
        description="MultiStep | StepLR | ReduceLROnPlateau (+): lr * lr_decay when monitor_name has not "
        "improved for lr_step_size epochs",
    )
    lr_steps: list[int] = spec_field([40], description="MultiStep: epochs at which the lr decays")
    lr_step_size: int = spec_field(
        40,
        ge=1,
        automl=True,
        automl_range=(1, 10000),
        description="StepLR period; ReduceLROnPlateau patience (epochs)",
    )
    lr_decay: float = spec_field(
        0.1,
        ge=0.0,
        le=1.0,
        automl=True,
        automl_range=(0.0, 1.0),
        condition="> 0",
        description="factor of each decay; 0 warns: the lr drops to 0 at the first decay",
    )


class CheckpointerSection(Section):
    """``train.checkpointer``: TAO's metric-ranked checkpointing. Inert."""

    enable_topk: bool = spec_field(False, inert=True)
    replace_periodic: bool = spec_field(False, inert=True)
    monitor: str = spec_field("", inert=True)
    mode: str = spec_field("", inert=True)
    save_top_k: int = spec_field(1, inert=True)
    filename: str = spec_field("model_best_{epoch:03d}", inert=True)
    dirpath: str = spec_field("", inert=True)
    auto_insert_metric_name: bool = spec_field(False, inert=True)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class TrainSection(Section):
    """``train``: the training run."""

    num_gpus: int = spec_field(1, ge=1, description="devices per node")
    gpu_ids: list[int] = spec_field([0])
    num_nodes: int = spec_field(1, ge=1)
    num_processes: int = spec_field(
        1, ge=1, description="(+) DDP processes per node on a machine without a GPU (gloo back end)"
    )
    seed: int = spec_field(1234, description="< 0 disables seeding")
    cudnn: CudnnSection = spec_field(CudnnSection())
    num_epochs: int = spec_field(10, ge=1)
    checkpoint_interval: int = spec_field(1, ge=1)
    checkpoint_interval_unit: Literal["epoch", "step"] = spec_field("epoch")
    validation_interval: int = spec_field(1, ge=1, description="epochs between validations")
    resume_training_checkpoint_path: str = spec_field(
        "", description="empty: resume from <results_dir>/train/dd_model_latest.pth if present"
    )
    pretrained_model_path: str = spec_field("", description="full-model initialisation")
    freeze: list[str] = spec_field([], description="module names to freeze, e.g. [backbone]")
    clip_grad_norm: float = spec_field(0.1, ge=0.0, description="0 disables clipping")
    is_dry_run: bool = spec_field(False, description="one batch of train and val, nothing kept")
    precision: Literal["fp32", "fp16", "bf16"] = spec_field("fp32")
    distributed_strategy: Literal["ddp", "fsdp"] = spec_field("ddp")
    activation_checkpoint: bool = spec_field(
        True,
        description="recompute transformer layers in the backward pass instead of keeping their activations "
        "(less memory, slower steps)",
    )
    verbose: bool = spec_field(False)
    input_width: int | None = spec_field(None, ge=1, inert=True, description="TAO: input tensor width")
    input_height: int | None = spec_field(None, ge=1, inert=True, description="TAO: input tensor height")
    results_dir: str = spec_field("", description="empty: <results_dir>/train")
    optim: OptimSection = spec_field(OptimSection())
    checkpointer: CheckpointerSection = spec_field(CheckpointerSection(), description="inert (TAO)")

    _precision = field_validator("precision", "distributed_strategy", mode="before")(_lower)

    def processes_per_node(self, cuda_available: bool) -> int:
        """Training processes on each node: ``num_gpus`` with a GPU, ``num_processes`` on the CPU."""
        return self.num_gpus if cuda_available else self.num_processes

    def world_size(self, cuda_available: bool) -> int:
        """Training processes in the whole job (processes per node * ``num_nodes``): one global batch is
        ``dataset.batch_size * world_size`` images."""
        return self.processes_per_node(cuda_available) * self.num_nodes


class _RunModelSection(Section):
    """Fields shared by ``evaluate`` and ``inference``: which model to run, where, and at what size."""

    checkpoint: str = spec_field("", description="a .pth checkpoint (this or trt_engine)")
    trt_engine: str = spec_field("", description="a TensorRT engine or an .onnx file")
    num_gpus: int = spec_field(1, ge=1, description="a GPU is used when there is one (the first of gpu_ids)")
    gpu_ids: list[int] = spec_field([0])
    num_nodes: int = spec_field(1, ge=1, inert=True)
    batch_size: int = spec_field(-1, ge=-1, description="-1: dataset.batch_size")
    conf_threshold: float = spec_field(0.0, ge=0.0, le=1.0)
    input_width: int | None = spec_field(None, ge=1, le=MAX_SIDE, description="both set: fixed resize")
    input_height: int | None = spec_field(None, ge=1, le=MAX_SIDE)


class EvaluateSection(_RunModelSection):
    """``evaluate``: COCO mAP of a checkpoint, ONNX file or engine on ``dataset.test_data_sources``."""

    results_dir: str = spec_field("", description="empty: <results_dir>/evaluate")


class InferenceSection(_RunModelSection):
    """``inference``: detections drawn and written for ``dataset.infer_data_sources``."""

    conf_threshold: float = spec_field(0.5, ge=0.0, le=1.0)
    color_map: dict[str, str] = spec_field({}, description="class name -> colour")
    is_internal: bool = spec_field(False, inert=True)
    outline_width: int = spec_field(3, ge=1, description="box outline in pixels")
    results_dir: str = spec_field("", description="empty: <results_dir>/inference")


class ExportSection(Section):
    """``export``: a checkpoint to ONNX."""

    checkpoint: str = spec_field("", description="the .pth checkpoint to export")
    onnx_file: str = spec_field(
        "", description="output path; empty or ???: <results_dir>/export/<checkpoint stem>.onnx"
    )
    opset_version: int = spec_field(17, ge=1)
    batch_size: int = spec_field(-1, ge=-1, description="-1: dynamic batch axis")
    input_channel: int = spec_field(3, ge=1, le=3)
    input_width: int = spec_field(640, ge=32, le=MAX_SIDE)
    input_height: int = spec_field(640, ge=32, le=MAX_SIDE)
    on_cpu: bool = spec_field(
        False, description="true: plain ONNX ops only; false: TensorRT attention plugin"
    )
    gpu_id: int = spec_field(0, ge=0, description="the GPU the model is traced on (unless on_cpu)")
    verbose: bool = spec_field(False)
    format: Literal["onnx", "xdl"] = spec_field(
        "onnx", inert=True, description="onnx; TAO's xdl is accepted and an ONNX file is written"
    )
    serialize_nvdsinfer: bool = spec_field(False, description="also write labels.txt and a DeepStream config")
    results_dir: str = spec_field("", description="empty: <results_dir>/export")


class QuantizeSection(Section):
    """``quantize``: post-training quantization of a checkpoint or ONNX model."""

    model_path: str = spec_field("", description="checkpoint or .onnx to quantize")
    backend: Literal["torchao", "modelopt.pytorch", "modelopt.onnx", "onnxruntime"] = spec_field("torchao")
    mode: Literal["weight_only_ptq", "static_ptq"] = spec_field("weight_only_ptq")
    algorithm: str = spec_field("minmax")
    layers: list[Any] = spec_field([], description="per-layer settings (TAO layout)")
    skip_names: list[str] = spec_field([], description="module names left in full precision")
    backend_kwargs: dict[str, Any] = spec_field({})
    device: str = spec_field(
        "cuda",
        pattern=r"^(cpu|cuda(:\d+)?|trt)$",
        description="cpu | cuda | cuda:N | trt: where calibration and the before/after mAP run (the CPU with "
        "a notice when there is no GPU)",
    )
    results_dir: str = spec_field("", description="empty: <results_dir>/quantize")


class CalibrationSection(Section):
    """``gen_trt_engine.tensorrt.calibration``: INT8 calibration."""

    cal_image_dir: list[str] = spec_field([])
    cal_cache_file: str = spec_field(
        "", description="INT8 calibration cache; ???: <results_dir>/gen_trt_engine/<onnx stem>.cal"
    )
    cal_batch_size: int = spec_field(1, ge=1)
    cal_batches: int = spec_field(1, ge=1)

    _wrap = field_validator("cal_image_dir", mode="before")(lambda v: [v] if isinstance(v, str) else v)


class TensorRTSection(Section):
    """``gen_trt_engine.tensorrt``: the engine builder."""

    data_type: Literal["FP32", "FP16", "INT8"] = spec_field("FP32")
    workspace_size: int = spec_field(1024, ge=0, description="MB")
    min_batch_size: int = spec_field(1, ge=1)
    opt_batch_size: int = spec_field(1, ge=1)
    max_batch_size: int = spec_field(1, ge=1)
    layers_precision: list[str] = spec_field([], description='"layer_name:fp32" strings')
    calibration: CalibrationSection = spec_field(CalibrationSection())

    _upper = field_validator("data_type", mode="before")(lambda v: v.upper() if isinstance(v, str) else v)


class GenTrtEngineSection(Section):
    """``gen_trt_engine``: an ONNX file to a TensorRT engine."""

    onnx_file: str = spec_field("")
    trt_engine: str = spec_field(
        "", description="output path; empty or ???: <results_dir>/gen_trt_engine/<onnx stem>.engine"
    )
    timing_cache: str = spec_field("")
    gpu_id: int = spec_field(0, ge=0, description="the GPU TensorRT builds (and calibrates) the engine on")
    batch_size: int = spec_field(-1, ge=-1, description="-1: dynamic")
    verbose: bool = spec_field(False)
    results_dir: str = spec_field("", description="empty: <results_dir>/gen_trt_engine")
    input_channel: int = spec_field(3, inert=True)
    input_width: int = spec_field(960, inert=True)
    input_height: int = spec_field(544, inert=True)
    opset_version: int = spec_field(17, inert=True)
    tensorrt: TensorRTSection = spec_field(TensorRTSection())


class AutomlSection(Section):
    """``automl`` (+): hyperparameter search over the fields marked ``automl`` in this module."""

    enabled: bool = spec_field(False)
    algorithm: Literal["bayesian", "hyperband", "asha", "random", "grid"] = spec_field("bayesian")
    sampler: Literal["tpe", "gp"] = spec_field(
        "tpe",
        description="(+) the model behind algorithm=bayesian: tpe (Tree-structured Parzen) or gp (Gaussian process)",
    )
    metric: Literal["val_mAP", "val_mAP50", "test_mAP", "test_mAP50"] = spec_field(
        "val_mAP",
        description="val_*: the trial's last validation; test_*: the trial's checkpoint evaluated on "
        "dataset.test_data_sources",
    )
    direction: Literal["maximize", "minimize"] = spec_field("maximize")
    max_recommendations: int = spec_field(20, ge=1, description="trials")
    max_epochs: int = spec_field(27, ge=1, description="epochs of the longest trial")
    reduction_factor: int = spec_field(3, ge=2, description="hyperband/asha")
    hyperparameters: list[str] = spec_field(
        [], description="dotted fields to search; empty: the default ones"
    )
    range_override: dict[str, Any] = spec_field(
        {}, description="dotted field -> [low, high] or list of choices"
    )
    max_concurrent: int = spec_field(1, ge=1)
    storage: str = spec_field("", description="optuna storage URL; empty: <results_dir>/automl/study.db")
    study_name: str = spec_field("")
    timeout_minutes: float = spec_field(0, ge=0, description="0: no limit")

    @field_validator("metric", mode="before")
    @classmethod
    def _no_loss_metric(cls, value: Any) -> Any:
        if value == "val_loss":
            raise PydanticCustomError(
                "automl_metric",
                "val_loss is refused: a loss is not comparable between trials (it changes with "
                "model.num_queries and the loss weights the search varies, and a lower loss need not mean "
                "better boxes); use val_mAP, val_mAP50, test_mAP or test_mAP50",
            )
        return value


class Spec(Section):
    """The whole experiment spec: top-level keys and one section per action."""

    model_name: str = spec_field("deformable_detr", inert=True)
    encryption_key: str = spec_field(
        "", description="encrypts checkpoints and exported models when set", repr=False
    )
    results_dir: str = spec_field(
        "", description="required; <results_dir>/<action>/ holds each action's outputs"
    )
    wandb: WandbSection = spec_field(WandbSection(), description="Weights & Biases logging of training")
    model: ModelSection = spec_field(ModelSection())
    dataset: DatasetSection = spec_field(DatasetSection())
    train: TrainSection = spec_field(TrainSection())
    evaluate: EvaluateSection = spec_field(EvaluateSection())
    inference: InferenceSection = spec_field(InferenceSection())
    export: ExportSection = spec_field(ExportSection())
    quantize: QuantizeSection = spec_field(QuantizeSection())
    gen_trt_engine: GenTrtEngineSection = spec_field(GenTrtEngineSection())
    automl: AutomlSection = spec_field(AutomlSection())
    automl_policy: Literal["on", "off"] = spec_field(
        "off", description="(+) on: `ddetr train` runs the AutoML search instead of one training"
    )
    jobs_db: str = spec_field(
        "",
        description="(+) job registry: a file or SQLAlchemy URL; empty: $DDETR_JOBS_DB, else ~/.ddetr/jobs.db",
    )
    parent_job_id: str = spec_field(
        "", description="(+) the job whose artefact this action takes (docs/jobs.md); an explicit path wins"
    )
    parent_select: str = spec_field(
        "best", description="(+) which artefact of the parent job: best, latest, epoch=N or step=N"
    )

    @field_validator("automl_policy", mode="before")
    @classmethod
    def _yaml_bools(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    def get(self, dotted: str) -> Any:
        """The value at a dotted path, e.g. ``spec.get("train.optim.lr")``.

        Raises:
            SpecError: the path names no field.
        """
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, BaseModel) or part not in type(node).model_fields:
                raise SpecError(f"{dotted}: no such field in the spec")
            node = getattr(node, part)
        return node


def is_set(value: Any) -> bool:
    """True unless ``value`` is empty (``''``, ``None``, ``[]``, ``['']``) or the ``???`` marker."""
    if value is None or value == MISSING:
        return False
    if isinstance(value, str):
        return value.strip() != ""
    if isinstance(value, (list, tuple)):
        return any(is_set(v) for v in value)
    return True


def require(spec: Spec, *fields: str) -> Any:
    """Return the value of the first given field that is set; raise if none is.

    ``require(spec, "evaluate.checkpoint")`` needs that field; ``require(spec, "evaluate.checkpoint",
    "evaluate.trt_engine")`` needs either.

    Raises:
        SpecError: every named field is empty or ``???``.
    """
    if not fields:
        raise ValueError("require() needs at least one field name")
    for name in fields:
        value = spec.get(name)
        if is_set(value):
            return value
    if len(fields) == 1:
        name = fields[0]
        shown = repr(spec.get(name))
        raise SpecError(
            f"{name} is required but not set (got {shown}); set it in the spec or pass {name}=..."
        )
    names = " or ".join(fields)
    raise SpecError(
        f"one of {names} is required but none is set; set one in the spec or pass {fields[0]}=..."
    )
