"""Fixtures for the deployment tests: an untrained tiny checkpoint (export parity does not need training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddetr.artefacts.card import ModelCard
from ddetr.artefacts.checkpoint import save_checkpoint
from ddetr.model.detector import DeformableDETR
from ddetr.spec.load import load_spec
from ddetr.spec.sections import ModelSection, Spec

CLASS_NAMES = ["", "circle", "square", "triangle"]


def tiny_model_section(**changes: object) -> ModelSection:
    """Two feature levels, box refinement: small, but every export-relevant path (levels, refinement) is used."""
    fields = {
        "backbone": "resnet_18",
        "hidden_dim": 32,
        "nheads": 2,
        "enc_layers": 1,
        "dec_layers": 2,
        "dim_feedforward": 64,
        "num_queries": 10,
        "num_select": 10,
        "num_feature_levels": 2,
        "return_interm_indices": [2, 3],
        "with_box_refine": True,
        "dropout_ratio": 0.0,
    }
    fields.update(changes)
    return ModelSection(**fields)


def write_checkpoint(
    path: Path, model_section: ModelSection, spec: dict | None = None, seed: int = 0
) -> Path:
    """A random-init ddetr checkpoint of ``model_section`` with 4 classes (ids 1..3 named)."""
    torch.manual_seed(seed)
    model = DeformableDETR.from_config(model_section, 4)
    if spec is None:
        card = ModelCard(model_section, 4, tuple(CLASS_NAMES), num_select=model_section.num_select)
    else:  # preprocessing and num_select from the spec, as training writes them
        card = ModelCard.from_spec(Spec.model_validate(spec), CLASS_NAMES).evolve(model=model_section)
    return save_checkpoint(path, card=card, state_dict=model.state_dict(), spec=spec)


@pytest.fixture
def tiny_section() -> ModelSection:
    """The tiny model section the deploy tests share (see :func:`tiny_model_section`)."""
    return tiny_model_section()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 2-level box-refinement checkpoint."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", tiny_model_section())


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported at 96x64 (w x h) with a dynamic batch, standard ops."""
    from ddetr.deploy.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(tiny_checkpoint, out, input_size=(96, 64), batch_size=-1).onnx_file


@pytest.fixture
def spec_args(tiny_data: dict, tiny_overrides, tmp_path: Path) -> list[str]:
    """Tiny-experiment overrides (synthetic data, results in tmp_path)."""
    return tiny_overrides(tiny_data, tmp_path / "results")


@pytest.fixture(scope="session")
def spec_checkpoint(tiny_data: dict, tiny_overrides, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init checkpoint of the tiny spec's model (with its spec), for the action tests."""
    folder = tmp_path_factory.mktemp("spec_ckpt")
    spec = load_spec(None, tiny_overrides(tiny_data, folder / "results"))
    return write_checkpoint(folder / "model.pth", spec.model, spec=spec.model_dump(), seed=1)


@pytest.fixture
def make_checkpoint(tmp_path: Path):
    """``make_checkpoint(**model_changes) -> Path``: a random-init checkpoint of a tiny-model variant."""

    def make(**changes: object) -> Path:
        return write_checkpoint(tmp_path / "variant.pth", tiny_model_section(**changes))

    return make
