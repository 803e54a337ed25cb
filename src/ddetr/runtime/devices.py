"""Where evaluate, inference, export and quantize run: device plans and CUDA out-of-memory as one line.

Training has its own plan (:func:`ddetr.engine.trainer.plan_devices`); the actions that run a model once
use these:

- :func:`run_device`: a checkpoint runs on ``cuda:<gpu_ids[0]>`` when CUDA exists and ``num_gpus >= 1``,
  else on the CPU (one notice). One process and one GPU: a second GPU would not speed up a single pass.
- :func:`onnx_providers`: an ONNX file runs on ONNX Runtime's TensorRT, then CUDA execution provider on that
  GPU when the installed ONNX Runtime has them, else on the CPU (one notice).
- :func:`export_device`: export traces on ``cuda:<gpu_id>`` unless ``on_cpu`` or no CUDA.
- :func:`explain_oom`: a CUDA out-of-memory error becomes :class:`~ddetr.errors.DeviceMemoryError`, one
  line naming the batch size and the field to lower.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from ddetr.errors import DeviceMemoryError

logger = logging.getLogger(__name__)

__all__ = ["explain_oom", "export_device", "is_out_of_memory", "onnx_providers", "run_device"]

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


def run_device(num_gpus: int, gpu_ids: Sequence[int], cuda_available: bool | None = None) -> str:
    """The torch device of ``evaluate``/``inference`` from their ``num_gpus`` and ``gpu_ids``.

    Args:
        num_gpus: GPUs asked for (>= 1 means "use a GPU when there is one").
        gpu_ids: device indices; the first one is used (0 when empty).
        cuda_available: for tests; None asks torch.

    Returns:
        ``"cuda:<id>"`` or ``"cpu"``.
    """
    if num_gpus < 1:
        return "cpu"
    if not _cuda_available(cuda_available):
        _notice("run-cpu", "No GPU found: running on the CPU.")
        return "cpu"
    ids = list(gpu_ids) or [0]
    if num_gpus > 1:
        _notice(
            "run-one-gpu",
            "Running on one GPU (cuda:%d); num_gpus=%d is used by training only.",
            ids[0],
            num_gpus,
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


def export_device(on_cpu: bool, gpu_id: int, cuda_available: bool | None = None) -> str:
    """The device export traces on: ``cuda:<gpu_id>`` unless ``on_cpu`` is set or there is no GPU."""
    if on_cpu or not _cuda_available(cuda_available):
        return "cpu"
    return f"cuda:{gpu_id}"


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
