"""Shared fixtures: a tiny spec on the synthetic dataset (fast to train on a CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ddetr.data.synthetic import generate_synthetic_dataset

HERE = Path(__file__).parent


def tiny_spec_dict(data: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """A tiny model on tiny images: a few seconds per epoch on a CPU."""
    return {
        "results_dir": str(results_dir),
        "model": {
            "backbone": "resnet_18",
            "hidden_dim": 32,
            "nheads": 2,
            "enc_layers": 1,
            "dec_layers": 1,
            "dim_feedforward": 64,
            "num_queries": 20,
            "num_select": 20,
            "num_feature_levels": 1,
            "return_interm_indices": [3],
            "with_box_refine": False,
        },
        "dataset": {
            "num_classes": 4,
            "batch_size": 2,
            "workers": 0,
            "pin_memory": False,
            "train_data_sources": [data["train"]],
            "val_data_sources": [data["val"]],
            "augmentation": {
                "scales": [96],
                "test_random_resize": 96,
                "train_random_resize": [96],
                "train_random_crop_min": 64,
                "train_random_crop_max": 96,
                "random_resize_max_size": 128,
            },
        },
        "train": {"num_epochs": 2, "optim": {"lr_steps": [100]}, "activation_checkpoint": False},
        "automl": {"max_epochs": 2, "max_recommendations": 4},
    }


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=(96, 96)
    )


@pytest.fixture
def tiny_spec_file(tmp_path: Path, synthetic: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(synthetic, tmp_path / "results")))
    return path
