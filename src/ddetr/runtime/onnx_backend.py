"""ONNX Runtime back end of the Predictor: a ddetr-exported (or quantized) ``.onnx`` file."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import Tensor

from ddetr.artefacts.onnx_file import INPUT_NAME, OUTPUT_NAMES, read_card
from ddetr.crypto import is_encrypted, read_bytes
from ddetr.errors import CheckpointError, UnavailableError
from ddetr.model.predict import Predictor, check_input_size

logger = logging.getLogger(__name__)


class OnnxPredictor(Predictor):
    """Runs a ddetr ONNX file in ONNX Runtime.

    The file's model card gives the class names, the fixed input size and the normalisation, so no spec model
    section or classmap is needed. Inputs must already be at the fixed size (evaluate and inference resize to
    ``card.input_size``); a file with a fixed batch size is fed in chunks of that size.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (0: ONNX Runtime's default, all cores).
        providers: ONNX Runtime execution providers; default CPU.
        encryption_key: the key an encrypted file was written with; it is decrypted in memory and the
            session is built from the bytes (plain files ignore the key).

    Raises:
        CheckpointError: not an ONNX file or not a ddetr export; encrypted with no key or the wrong key.
        UnavailableError: the file holds the TensorRT attention plugin (export with ``on_cpu: true``).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int = 0,
        providers: list[str] | None = None,
        encryption_key: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = str(path)
        # an encrypted file is decrypted once, in memory; the plaintext never touches the disk
        model: str | bytes = read_bytes(path, encryption_key) if is_encrypted(path) else self.path
        self.card = read_card(path, data=model if isinstance(model, bytes) else None)
        if self.card.trt_plugin:
            raise UnavailableError(
                f"{path}: exported for TensorRT (attention plugin node, export.on_cpu=false); ONNX Runtime cannot "
                "run it. Re-export with export.on_cpu=true, or build an engine with `ddetr gen_trt_engine`."
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                model, sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types, all unrelated to ours
            raise CheckpointError(
                f"{path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0]}"
            ) from None
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self._warned_padding = False

    def __call__(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) normalised at ``card.input_size`` -> logits (B, Q, C), boxes (B, Q, 4)."""
        check_input_size(self.card, images, self.path)
        if mask is not None and bool(mask.any()) and not self._warned_padding:
            logger.warning(
                "%s: padded input given to an exported model; padding is treated as image.", self.path
            )
            self._warned_padding = True
        array = images.detach().float().cpu().numpy()
        chunk = self.fixed_batch or array.shape[0]
        logits, boxes = [], []
        for start in range(0, array.shape[0], chunk):
            part = array[start : start + chunk]
            real = part.shape[0]
            if real < chunk:  # fixed-batch file: pad the last chunk with zeros, drop their outputs
                part = np.concatenate([part, np.zeros((chunk - real, *part.shape[1:]), part.dtype)])
            out_logits, out_boxes = self.session.run(
                list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(part)}
            )
            logits.append(out_logits[:real])
            boxes.append(out_boxes[:real])
        return torch.from_numpy(np.concatenate(logits)), torch.from_numpy(np.concatenate(boxes))
