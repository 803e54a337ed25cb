"""What each action returns: small frozen dataclasses, one per task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvaluateResult:
    """``evaluate``: COCO numbers of a model on ``dataset.test_data_sources``."""

    model: Path
    backend: str
    images: int
    test_mAP: float
    test_mAP50: float
    stats: dict[str, float]
    per_class_AP: dict[str, float]
    metrics_json: Path
    detections_json: Path

    def summary(self) -> dict[str, str | int | float]:
        """The scalar facts the command line prints."""
        return {
            "model": str(self.model),
            "backend": self.backend,
            "images": self.images,
            "test_mAP": self.test_mAP,
            "test_mAP50": self.test_mAP50,
        }


@dataclass(frozen=True)
class InferenceResult:
    """``inference``: detections written for ``dataset.infer_data_sources``."""

    images: int
    detections: int
    images_annotated: Path
    labels: Path
    detections_json: Path

    def summary(self) -> dict[str, str | int | float]:
        """The scalar facts the command line prints."""
        return {
            "images": self.images,
            "detections": self.detections,
            "images_annotated": str(self.images_annotated),
            "labels": str(self.labels),
            "detections_json": str(self.detections_json),
        }
