"""``ddetr quantize``: a quantized checkpoint or ONNX file plus a before/after report (size, mAP)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ddetr.spec.sections import Spec
from ddetr.tasks.jobrecord import recorded
from ddetr.tasks.results import QuantizeResult

logger = logging.getLogger(__name__)


def _eval_pairs(spec: Any) -> list[tuple[str, str]]:
    """Validation data for the report: ``dataset.test_data_sources`` if set, else ``val_data_sources``."""
    from ddetr.data.sources import resolve_sources

    limits = spec.dataset.archive_limits
    pairs = resolve_sources(spec.dataset.test_data_sources, limits)
    return pairs or resolve_sources(spec.dataset.val_data_sources, limits)


def weights_bytes(path: str | Path, encryption_key: str | None = None) -> int:
    """Bytes of a model's weights: an ONNX file's size, or a checkpoint's state dict serialised alone.

    A training checkpoint also holds the optimizer state (about twice the weights with AdamW), which is not
    part of the model a quantizer shrinks, so comparing file sizes would flatter the quantized file.
    """
    import io

    import torch

    from ddetr.artefacts.checkpoint import load_checkpoint

    file = Path(path)
    if file.suffix.lower() == ".onnx":
        return file.stat().st_size
    buffer = io.BytesIO()
    torch.save(load_checkpoint(file, encryption_key=encryption_key).state_dict, buffer)
    return buffer.tell()


@recorded("quantize")
def run(spec: Spec) -> QuantizeResult:
    """Quantize; writes the artefact, ``quantize_report.json`` and status.json under ``<results_dir>/quantize``.

    Returns:
        The report's facts: both models, their weight and file sizes and, with test or validation data, their
        mAPs.

    Calibration and the before/after evaluation run on ``quantize.device``
    (:func:`ddetr.runtime.devices.quantize_device`: the GPU it names, the CPU with one notice without CUDA).

    Raises:
        SpecError / CheckpointError / UnavailableError: one line, before any work (a GPU this machine does
            not have is a SpecError).
    """
    from ddetr.artefacts.card import card_for_spec
    from ddetr.deploy.quantize import plan_quantization, quantize
    from ddetr.fileio import atomic_write_text
    from ddetr.runtime import load_predictor
    from ddetr.runtime.devices import quantize_device
    from ddetr.runtime.evaluation import evaluate_predictor
    from ddetr.status import StatusLogger
    from ddetr.tasks.common import action_dir, prepare_results_dir

    section = spec.quantize
    # checks first (one-line errors before any work), then the results folder

    plan = plan_quantization(
        section, spec.dataset.quant_calibration_data_sources, action_dir(spec, "quantize")
    )
    device = quantize_device(section.device)
    out_dir = prepare_results_dir(spec, "quantize")
    status = StatusLogger(out_dir / "status.json")
    with status.action(f"Quantizing {plan.model_path} with {plan.backend} ({plan.mode})."):
        done = quantize(plan, spec, device)
        key = spec.encryption_key or None
        report: dict[str, Any] = {
            "backend": plan.backend,
            "mode": plan.mode,
            "device": device,
            "float_model": done["float_model"],
            "quantized_model": done["output"],
            "quantization": done["quantization"],
            "size_bytes": {  # the weights (a .pth file also holds optimizer state): what quantization shrinks
                "before": weights_bytes(done["float_model"], key),
                "after": weights_bytes(done["output"], key),
            },
            "file_bytes": {
                "before": Path(done["float_model"]).stat().st_size,
                "after": Path(done["output"]).stat().st_size,
            },
        }
        report["size_ratio"] = report["size_bytes"]["after"] / max(report["size_bytes"]["before"], 1)
        pairs = _eval_pairs(spec)
        if pairs:
            scores = []
            for model_file in (done["float_model"], done["output"]):
                predictor = load_predictor(model_file, device=device, encryption_key=key)
                predictor.card = card_for_spec(predictor.card, spec)
                scores.append(evaluate_predictor(predictor, pairs, batch_size=1))
            before, after = scores
            report["mAP"] = {"before": before.mAP, "after": after.mAP}
            report["mAP50"] = {"before": before.mAP50, "after": after.mAP50}
            report["eval_images"] = before.images
        else:
            logger.warning("No dataset.test_data_sources or val_data_sources: the report has no mAP.")
            report["mAP"] = report["mAP50"] = None
        report_json = atomic_write_text(out_dir / "quantize_report.json", json.dumps(report, indent=2))
        mAP = report["mAP"]
        logger.info(
            "Quantized %s -> %s: weights %.1f MB -> %.1f MB%s",
            plan.model_path,
            plan.output,
            report["size_bytes"]["before"] / 1e6,
            report["size_bytes"]["after"] / 1e6,
            f", mAP {mAP['before']:.4f} -> {mAP['after']:.4f}" if mAP else "",
        )
        kpi = {"mAP_before": mAP["before"], "mAP_after": mAP["after"]} if mAP else None
        status.write(status="SUCCESS", message=f"Quantized model: {plan.output}.", kpi=kpi)
        mAP50 = report["mAP50"]
        return QuantizeResult(
            backend=report["backend"],
            mode=report["mode"],
            device=report["device"],
            float_model=Path(report["float_model"]),
            quantized_model=Path(report["quantized_model"]),
            report_json=Path(report_json),
            weights_bytes_before=report["size_bytes"]["before"],
            weights_bytes_after=report["size_bytes"]["after"],
            file_bytes_before=report["file_bytes"]["before"],
            file_bytes_after=report["file_bytes"]["after"],
            size_ratio=report["size_ratio"],
            quantization=dict(report["quantization"] or {}),
            mAP_before=mAP["before"] if mAP else None,
            mAP_after=mAP["after"] if mAP else None,
            mAP50_before=mAP50["before"] if mAP50 else None,
            mAP50_after=mAP50["after"] if mAP50 else None,
            eval_images=report.get("eval_images"),
        )
