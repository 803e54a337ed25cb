"""Where evaluate, inference, export and quantize run: device plans and CUDA out-of-memory as one line.

Training has its own plan (:func:`ddetr.engine.trainer.plan_devices`); the actions that run a model once
use these:

- :func:`run_device`: a checkpoint runs on ``cuda:<gpu_ids[0]>`` when CUDA exists and ``num_gpus >= 1``,
  else on the CPU (one notice). One process and one GPU: a second GPU would not speed up a single pass.
- :func:`onnx_providers`: an ONNX file runs on ONNX Runtime's TensorRT, then CUDA execution provider on that
  GPU when the installed ONNX Runtime has them, else on the CPU (one notice).
- :func:`export_device`: export traces on ``cuda:<gpu_id>`` unless ``on_cpu`` or no CUDA.
- :func:`quantize_device`: ``quantize.device`` (``cpu``, ``cuda``, ``cuda:N``, ``trt``) as a torch device,
  the CPU with one notice when there is no GPU; :func:`calibration_providers` the ONNX Runtime providers
  that calibrate on it.
- :func:`trt_build_gpu`: the GPU TensorRT builds an engine on (``gen_trt_engine.gpu_id``).
- :func:`check_gpu`: a GPU index this machine does not have is a one-line :class:`~ddetr.errors.SpecError`
  before any work (every plan above checks its index with it when CUDA exists).
- :func:`explain_oom`: a CUDA out-of-memory error becomes :class:`~ddetr.errors.DeviceMemoryError`, one
  line naming the batch size and the field to lower.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from ddetr.errors import DeviceMemoryError, SpecError

logger = logging.getLogger(__name__)

__all__ = [
    "calibration_providers",
    "check_gpu",
    "explain_oom",
    "export_device",
    "is_out_of_memory",
    "onnx_providers",
    "quantize_device",
    "run_device",
    "trt_build_gpu",
]

_noticed: set[str] = set()


def _notice(key: str, message: str, *args: Any) -> None:
    # one notice per process and kind, however many files are opened
    if key not in _noticed:
        _noticed.add(key)
        logger.info(message, *args)


def _cuda_available(cuda_available: bool | None) -> bool:
    if cuda_available is not None:
        return cuda_available
    import torch

    return torch.cuda.is_available()


def check_gpu(field: str, index: int, device_count: int | None = None) -> None:
    """Refuse a GPU index this machine does not have, in one line naming the field.

    Args:
        field: the spec field that names the GPU (``evaluate.gpu_ids``, ``quantize.device``, ...).
        index: the CUDA device index asked for.
        device_count: for tests; None asks torch.

    Raises:
        SpecError: ``index`` is not below the number of CUDA devices.
    """
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    if not 0 <= index < device_count:
        raise SpecError(
            f"{field}: GPU {index} does not exist (this machine has {device_count} GPU(s), ids 0 to "
            f"{device_count - 1}); set {field} to one of them"
        )


def run_device(
    num_gpus: int,
    gpu_ids: Sequence[int],
    cuda_available: bool | None = None,
    device_count: int | None = None,
    field: str = "gpu_ids",
) -> str:
    """The torch device of ``evaluate``/``inference`` from their ``num_gpus`` and ``gpu_ids``.

    One pass over the data runs on one GPU: ``num_gpus`` > 1 or several ``gpu_ids`` cost one notice and the
    first id is used (a second GPU would need a second process and a merge of the detections for little
    gain on an evaluation that is mostly image decoding and COCO scoring).

    Args:
        num_gpus: GPUs asked for (>= 1 means "use a GPU when there is one").
        gpu_ids: device indices; the first one is used (0 when empty).
        cuda_available: for tests; None asks torch.
        device_count: for tests; None asks torch.
        field: the spec field of ``gpu_ids``, for the error message (``evaluate.gpu_ids``).

    Returns:
        ``"cuda:<id>"`` or ``"cpu"``.

    Raises:
        SpecError: the first of ``gpu_ids`` is not a GPU of this machine.
    """
    if num_gpus < 1:
        return "cpu"
    if not _cuda_available(cuda_available):
        _notice("run-cpu", "No GPU found: running on the CPU.")
        return "cpu"
    ids = list(gpu_ids) or [0]
    check_gpu(field, ids[0], device_count)
    if num_gpus > 1:
        _notice(
            "run-one-gpu",
            "Running on one GPU (cuda:%d); num_gpus=%d is used by training only.",
            ids[0],
            num_gpus,
        )
    elif len(ids) > 1:
        _notice(
            "run-first-gpu",
            "Running on one GPU (cuda:%d), the first of gpu_ids %s; the others are used by training only.",
            ids[0],
            ids,
        )
    return f"cuda:{ids[0]}"


def onnx_providers(device: str, available: Sequence[str] | None = None) -> list[Any]:
    """ONNX Runtime execution providers for a device: TensorRT, CUDA, then CPU, as far as installed.

    Args:
        device: ``"cpu"`` or ``"cuda:<id>"`` (from :func:`run_device`).
        available: the installed providers, for tests; None asks ONNX Runtime.

    Returns:
        The ``providers`` argument of ``onnxruntime.InferenceSession`` (names or ``(name, options)`` pairs).
    """
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    chosen: list[Any] = [
        (name, {"device_id": index})
        for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        if name in available
    ]
    if not chosen:
        _notice(
            "onnx-cpu",
            "ONNX Runtime has no CUDA or TensorRT execution provider (install onnxruntime-gpu): running the "
            "ONNX file on the CPU.",
        )
    return [*chosen, "CPUExecutionProvider"]


def export_device(
    on_cpu: bool, gpu_id: int, cuda_available: bool | None = None, device_count: int | None = None
) -> str:
    """The device export traces on: ``cuda:<gpu_id>`` unless ``on_cpu`` is set or there is no GPU.

    Raises:
        SpecError: ``export.gpu_id`` is not a GPU of this machine (checked only when it would be used).
    """
    if on_cpu or not _cuda_available(cuda_available):
        return "cpu"
    check_gpu("export.gpu_id", gpu_id, device_count)
    return f"cuda:{gpu_id}"


def quantize_device(device: str, cuda_available: bool | None = None, device_count: int | None = None) -> str:
    """The torch device ``quantize`` calibrates and evaluates on, from ``quantize.device``.

    ``cpu`` is the CPU; ``cuda`` and ``trt`` are GPU 0 and ``cuda:N`` GPU N when CUDA exists, else the CPU
    with one notice (``trt`` also lets ONNX Runtime calibrate with its TensorRT provider, see
    :func:`calibration_providers`).

    Args:
        device: ``quantize.device``.
        cuda_available, device_count: for tests; None asks torch.

    Returns:
        ``"cpu"`` or ``"cuda:<N>"``.

    Raises:
        SpecError: GPU N does not exist (before any work).
    """
    if device == "cpu":
        return "cpu"
    if not _cuda_available(cuda_available):
        _notice("quantize-cpu", "No GPU found: quantize.device=%s runs on the CPU.", device)
        return "cpu"
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    check_gpu("quantize.device", index, device_count)
    return f"cuda:{index}"


def calibration_providers(
    device: str, tensorrt: bool = False, available: Sequence[str] | None = None
) -> list[Any]:
    """ONNX Runtime providers for calibrating an ONNX file on ``device`` (from :func:`quantize_device`).

    CUDA (then CPU) on a GPU; ONNX Runtime's TensorRT provider first only when asked (``quantize.device=trt``):
    it builds an engine for each calibration session, which is slow.

    Args:
        device: ``"cpu"`` or ``"cuda:<N>"``.
        tensorrt: keep ONNX Runtime's TensorRT execution provider when installed.
        available: the installed providers, for tests; None asks ONNX Runtime.
    """
    providers = onnx_providers(device, available)
    if tensorrt:
        return providers
    return [p for p in providers if not (isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider")]


def trt_build_gpu(gpu_id: int, device_count: int | None = None) -> int:
    """The CUDA device TensorRT builds an engine on: ``gen_trt_engine.gpu_id``, checked against this machine.

    (No GPU at all is :func:`ddetr.runtime.trt.require_tensorrt`'s one-line error.)

    Raises:
        SpecError: ``gen_trt_engine.gpu_id`` is not a GPU of this machine.
    """
    check_gpu("gen_trt_engine.gpu_id", gpu_id, device_count)
    return gpu_id


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's CUDA OOM and for ONNX Runtime's / TensorRT's failed device allocations."""
    name = type(exc).__name__
    if name == "OutOfMemoryError":
        return True
    text = str(exc)
    return "CUDA out of memory" in text or ("Failed to allocate memory" in text and "CUDA" in text)


@contextlib.contextmanager
def explain_oom(field: str, batch_size: int) -> Iterator[None]:
    """Turn a CUDA out-of-memory error raised inside into one line naming the batch size and the field.

    Args:
        field: the spec field that sets the batch size (``evaluate.batch_size``, ``dataset.batch_size``).
        batch_size: its value in this run.

    Raises:
        DeviceMemoryError: the GPU ran out of memory.
    """
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        lower = max(1, batch_size // 2)
        raise DeviceMemoryError(
            f"CUDA out of memory at batch size {batch_size}: lower {field} (e.g. {field}={lower})"
            + (" or the input size" if batch_size <= 1 else "")
        ) from None
