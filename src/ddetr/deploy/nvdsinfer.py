"""DeepStream files beside an exported model: ``labels.txt`` and an nvinfer configuration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ddetr.artefacts.card import ModelCard
from ddetr.errors import SpecError
from ddetr.fileio import atomic_write_text


def labels_text(class_names: Sequence[str], num_classes: int) -> str:
    """One line per logit index 0..C-1 (nvinfer's order); unnamed ids get ``class_<id>``."""
    names = list(class_names) + [""] * (num_classes - len(class_names))
    return "\n".join(name or f"class_{i}" for i, name in enumerate(names[:num_classes])) + "\n"


def nvinfer_config_text(
    onnx_name: str,
    *,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    batch_size: int,
) -> str:
    """The ``[property]`` group of a DeepStream nvinfer config for the exported detector.

    nvinfer computes ``net-scale-factor * (pixel - offset)`` per channel on 0..255 pixels; one scale factor is
    shared by all channels, so the mean of the three ``1 / (255 * std)`` is used (exact for equal stds).
    """
    width, height = input_size
    offsets = ";".join(f"{255.0 * m:.3f}" for m in mean)
    scale = sum(1.0 / (255.0 * s) for s in std) / len(std)
    return "\n".join(
        [
            "[property]",
            "gpu-id=0",
            f"net-scale-factor={scale:.8f}",
            f"offsets={offsets}",
            "model-color-format=0",
            f"onnx-file={onnx_name}",
            f"model-engine-file={onnx_name}_b{max(batch_size, 1)}_gpu0_fp32.engine",
            "labelfile-path=labels.txt",
            f"infer-dims=3;{height};{width}",
            f"batch-size={max(batch_size, 1)}",
            "network-mode=0",
            f"num-detected-classes={num_classes}",
            "interval=0",
            "gie-unique-id=1",
            "network-type=0",
            "cluster-mode=4",
            "output-blob-names=pred_boxes;pred_logits",
            "parse-bbox-func-name=NvDsInferParseCustomDDETRTAO",
            "custom-lib-path=/opt/nvidia/deepstream/deepstream/lib/libnvds_infercustomparser_tao.so",
            "",
            "[class-attrs-all]",
            "pre-cluster-threshold=0.5",
            "topk=20",
            "",
        ]
    )


def write_nvdsinfer(onnx_file: Path, card: ModelCard, batch_size: int) -> tuple[Path, Path]:
    """Write ``labels.txt`` and ``nvinfer_config.txt`` next to ``onnx_file``; returns both paths.

    Args:
        onnx_file: the exported file.
        card: its model card (class names, num_classes, fixed input size, mean/std).
        batch_size: the export's batch size (-1: dynamic).
    """
    if card.input_size is None:
        raise SpecError(
            f"{onnx_file}: DeepStream needs a fixed input size; export with input_width/input_height."
        )
    folder = onnx_file.parent
    labels, config = folder / "labels.txt", folder / "nvinfer_config.txt"
    atomic_write_text(labels, labels_text(card.class_names, card.num_classes))
    atomic_write_text(
        config,
        nvinfer_config_text(
            onnx_file.name,
            input_size=card.input_size,
            mean=card.mean,
            std=card.std,
            num_classes=card.num_classes,
            batch_size=batch_size,
        ),
    )
    return labels, config
