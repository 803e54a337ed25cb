"""Quantized layouts of the detector: what loading a quantized checkpoint needs (torchao, NVIDIA ModelOpt).

Quantizing (calibration, layer selection, writing) is the deploy layer's work; giving a freshly built float
model the layout of a quantized checkpoint, so that its weights load, is the model's, and lives here:
:func:`prepare_quantized_model`. Both back ends are optional packages, imported only when used, with a
one-line :class:`~ddetr.errors.UnavailableError` naming the package when missing.

- torchao ``int8_weight_only``: every ``nn.Linear`` (not ``nn.MultiheadAttention``'s projections) holds int8
  weights and runs with float activations (:func:`apply_int8_weight_only`).
- ModelOpt ``modelopt.pytorch``: the backbone's frozen batch norms are baked into their convolutions
  (:func:`bake_batch_norms`), ModelOpt's quantizers are re-inserted from the checkpoint's ``modelopt_state`` and
  the int8-stored weights are turned back into float (``code * amax / 127``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ddetr.artefacts.checkpoint import LoadedCheckpoint
from ddetr.errors import CheckpointError, UnavailableError

logger = logging.getLogger(__name__)

TORCHAO_INSTALL = "pip install torchao"
RECIPE = "int8_weight_only"


def require_torchao() -> Any:
    """Import torchao or raise UnavailableError naming the package."""
    try:
        import torchao.quantization as quantization
    except ImportError:
        raise UnavailableError(
            f"quantize.backend=torchao needs the torchao package, which is not installed; run `{TORCHAO_INSTALL}`."
        ) from None
    return quantization


def apply_int8_weight_only(model: nn.Module, skip_names: Sequence[str] = ()) -> list[str]:
    """Quantize every ``nn.Linear`` (not nn.MultiheadAttention's projections) of ``model`` in place (int8 weights, float activations) except skipped ones.

    Args:
        model: the detector (float, eval mode).
        skip_names: module-name substrings left in float.

    Returns:
        The names of the quantized modules.
    """
    quantization = require_torchao()
    quantized: list[str] = []
    seen: set[int] = set()  # heads shared between decoder layers are one module reached by several names

    # exactly nn.Linear: nn.MultiheadAttention's out_proj subclass is read as a raw weight by F.linear's caller

    def wanted(module: nn.Module, name: str) -> bool:
        keep = (
            type(module) is nn.Linear
            and id(module) not in seen
            and not any(s and s in name for s in skip_names)
        )
        if keep:
            seen.add(id(module))
            quantized.append(name)
        return keep

    quantization.quantize_(model, quantization.Int8WeightOnlyConfig(), filter_fn=wanted)
    return quantized


def prepare_model(model: nn.Module, note: dict[str, Any]) -> None:
    """Give a freshly built float model the layout a quantized checkpoint's state dict has (for loading)."""
    if note.get("backend") == "torchao" and note.get("recipe") == RECIPE:
        apply_int8_weight_only(model, note.get("skip_names") or ())


# importable module -> the distribution that provides it
REQUIRED = {
    "modelopt.pytorch": {"modelopt": "nvidia-modelopt"},
    "modelopt.onnx": {
        "modelopt": "nvidia-modelopt",
        "onnx_graphsurgeon": "onnx-graphsurgeon",
        "onnxslim": "onnxslim",
        "onnxscript": "onnxscript",
        "lief": "lief",
    },
}
MODELOPT_INSTALL = "pip install 'nvidia-modelopt>=0.47' onnx-graphsurgeon onnxslim onnxscript lief"
INT8_MAX = 127.0


def missing_packages(backend: str) -> list[str]:
    """The distributions ``backend`` (``modelopt.pytorch`` | ``modelopt.onnx``) needs that are not installed."""
    import importlib.util

    return [dist for module, dist in REQUIRED[backend].items() if importlib.util.find_spec(module) is None]


def require_modelopt(backend: str, purpose: str | None = None) -> None:
    """Raise a one-line UnavailableError naming the missing packages, if any.

    Args:
        backend: ``modelopt.pytorch`` or ``modelopt.onnx``.
        purpose: what needs them (default ``quantize.backend=<backend>``).
    """
    missing = missing_packages(backend)
    if missing:
        raise UnavailableError(
            f"{purpose or f'quantize.backend={backend}'} needs NVIDIA ModelOpt; not installed: {', '.join(missing)}. "
            f"Run `{MODELOPT_INSTALL}` (or install ddetr with its [modelopt] extra)."
        )


@contextlib.contextmanager
def quiet() -> Any:
    """Silence ModelOpt's import-time warnings and prints (untested transformers version, no CUDA runtime)."""
    cpp = logging.getLogger("torch.utils.cpp_extension")
    level = cpp.level
    cpp.setLevel(logging.ERROR)
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            yield
    finally:
        cpp.setLevel(level)
        if out.getvalue().strip():
            logger.debug("ModelOpt: %s", out.getvalue().strip())


def modelopt_torch(purpose: str) -> tuple[Any, Any]:
    """``(modelopt.torch.quantization, modelopt.torch.opt)``, or UnavailableError naming the package."""
    require_modelopt("modelopt.pytorch", purpose)
    try:
        with quiet():
            import modelopt.torch.opt as mto
            import modelopt.torch.quantization as mtq
    except ImportError as exc:  # installed but broken (e.g. a torch it does not support)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UnavailableError(
            f"{purpose} needs NVIDIA ModelOpt, which fails to import ({reason}); reinstall with `{MODELOPT_INSTALL}`."
        ) from None
    return mtq, mto


def bake_batch_norms(model: nn.Module) -> int:
    """Turn every backbone convolution with a folded frozen batch norm into a plain ``nn.Conv2d``, in place.

    The convolution gets the normalised weight ``w * s`` and bias ``b * s + beta - mean * s`` (``s = gamma /
    sqrt(var + eps)``); the batch norm, whose forward is already the identity, is set to the identity
    statistics so that the state dict stays consistent. Outputs are unchanged up to float rounding. ModelOpt
    then quantizes the weight the convolution really uses, as TensorRT does after folding.

    Returns:
        The number of convolutions baked.
    """
    from ddetr.model.backbone import BatchNormConv2d

    count = 0
    for module in model.modules():
        if type(module) is not BatchNormConv2d:
            continue
        norm = module.norm
        with torch.no_grad():
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            shift = norm.bias - norm.running_mean * scale
            bias = shift if module.bias is None else module.bias * scale + shift
            module.weight.mul_(scale.view(-1, 1, 1, 1))
            norm.weight.fill_(1.0)
            norm.bias.zero_()
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
        if module.bias is None:
            module.bias = nn.Parameter(bias.detach().clone(), requires_grad=module.weight.requires_grad)
        else:
            with torch.no_grad():
                module.bias.copy_(bias)
        del module.__dict__["norm"]
        module.__class__ = nn.Conv2d
        count += 1
    return count


def float_weights(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Undo :func:`_int8_weights` in place: int8 codes times ``amax / 127`` (float32)."""
    for key, value in list(state_dict.items()):
        if value.dtype != torch.int8 or not key.endswith("weight"):
            continue
        amax = state_dict.get(f"{key}_quantizer._amax")
        if amax is None:
            raise CheckpointError(f"{source}: int8 weight {key} has no {key}_quantizer._amax scale.")
        state_dict[key] = value.float() * (amax.float() / INT8_MAX)


def restore_quantized_model(model: nn.Module, info: LoadedCheckpoint) -> nn.Module:
    """Give a freshly built float model the layout of a ``modelopt.pytorch`` checkpoint, ready to load its weights.

    Bakes the batch norms, re-inserts ModelOpt's quantizers from ``modelopt_state`` and turns the stored int8
    weights of ``info.state_dict`` back into float (in place).

    Args:
        model: ``DeformableDETR.from_config`` of the checkpoint's model section.
        info: the checkpoint as read by :func:`ddetr.artefacts.checkpoint.load_checkpoint`.

    Returns:
        The model to load ``info.state_dict`` into (ModelOpt converts it in place and returns it).

    Raises:
        UnavailableError: ModelOpt is not installed. CheckpointError: no ``modelopt_state`` in the checkpoint.
    """
    state = info.raw.get("modelopt_state")
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{info.path}: a modelopt.pytorch checkpoint without its 'modelopt_state' entry."
        )
    _, mto = modelopt_torch(f"{info.path} (a modelopt.pytorch quantized checkpoint)")
    bake_batch_norms(model)
    with quiet():
        model = mto.restore_from_modelopt_state(model, dict(state))
    float_weights(info.state_dict, str(info.path))
    return model


def prepare_quantized_model(model: nn.Module, loaded: LoadedCheckpoint) -> nn.Module:
    """Give a freshly built float model the layout of the quantized checkpoint ``loaded`` (before its weights load).

    Args:
        model: the float detector built from the checkpoint's card.
        loaded: the checkpoint (its ``card.quantization`` names the back end).

    Returns:
        The model to load ``loaded.state_dict`` into.

    Raises:
        CheckpointError: a back end this ddetr does not read. UnavailableError: its package is missing.
    """
    note = dict(loaded.card.quantization or {})
    backend = note.get("backend")
    if backend == "torchao":
        prepare_model(model, note)
        return model
    if backend == "modelopt.pytorch":
        return restore_quantized_model(model, loaded)
    raise CheckpointError(
        f"{loaded.path}: quantized by {backend!r}; this ddetr reads torchao and modelopt.pytorch checkpoints."
    )
