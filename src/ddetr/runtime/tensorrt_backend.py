"""TensorRT back end of the Predictor: an engine built by ``ddetr gen_trt_engine`` (TensorRT 10 API, CUDA)."""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from ddetr.artefacts.engine_file import read_sidecar
from ddetr.crypto import read_bytes
from ddetr.errors import CheckpointError
from ddetr.model.predict import Predictor, check_input_size
from ddetr.runtime.trt import load_plugin_libraries, require_tensorrt

logger = logging.getLogger(__name__)


class TensorRTPredictor(Predictor):
    """Runs a serialized TensorRT engine on the GPU.

    The engine's sidecar (``<engine>.json``, written by ``gen_trt_engine``) holds the model card: class names, input size and
    normalisation. Batches larger than the engine's maximum batch are run in chunks.

    Args:
        path: the engine file (``.engine`` / ``.trt`` / ``.plan``).
        device: CUDA device index.
        encryption_key: the key an encrypted engine was written with (plain files ignore it).

    Raises:
        UnavailableError: TensorRT or a GPU is missing (checked before the file is read).
        CheckpointError: no sidecar, or the engine cannot be deserialized.
    """

    backend = "tensorrt"

    def __init__(
        self, path: str | os.PathLike[str], device: int = 0, encryption_key: str | None = None
    ) -> None:
        trt = require_tensorrt("running a TensorRT engine")
        self.path = str(path)
        sidecar = read_sidecar(path)
        self.card = sidecar.card
        self.max_batch = sidecar.max_batch
        self.device = torch.device("cuda", device)
        trt_logger = trt.Logger(trt.Logger.WARNING)
        load_plugin_libraries(trt, trt_logger)
        self.runtime = trt.Runtime(trt_logger)
        self.engine = self.runtime.deserialize_cuda_engine(read_bytes(path, encryption_key))
        if self.engine is None:
            raise CheckpointError(
                f"{path}: TensorRT cannot deserialize this engine (another TensorRT version or GPU?)."
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)

    def __call__(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) at ``card.input_size`` -> logits (B, Q, C), boxes (B, Q, 4) on the CPU."""
        check_input_size(self.card, images, self.path)
        logits, boxes = [], []
        for start in range(0, images.shape[0], self.max_batch):
            chunk_logits, chunk_boxes = self._run(images[start : start + self.max_batch])
            logits.append(chunk_logits)
            boxes.append(chunk_boxes)
        return torch.cat(logits), torch.cat(boxes)

    def _run(self, images: Tensor) -> tuple[Tensor, Tensor]:
        batch = int(images.shape[0])
        inputs = images.to(self.device, torch.float32).contiguous()
        self.context.set_input_shape("inputs", tuple(inputs.shape))
        logits = torch.empty((batch, self.card.num_queries, self.card.num_classes), device=self.device)
        boxes = torch.empty((batch, self.card.num_queries, 4), device=self.device)
        for name, tensor in (("inputs", inputs), ("pred_logits", logits), ("pred_boxes", boxes)):
            self.context.set_tensor_address(name, int(tensor.data_ptr()))
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise CheckpointError(f"{self.path}: TensorRT execution failed.")
        self.stream.synchronize()
        return logits.cpu(), boxes.cpu()
