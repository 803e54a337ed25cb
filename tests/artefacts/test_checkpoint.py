"""Self-describing checkpoints: round trip of the card, atomic writes, Lightning checkpoints, building the model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddetr.artefacts import checkpoint as ckpt
from ddetr.artefacts.card import ModelCard
from ddetr.artefacts.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from ddetr.errors import CheckpointError
from ddetr.model.detector import DeformableDETR, build_model_from_checkpoint
from ddetr.spec.sections import ModelSection

NUM_CLASSES = 4
CLASS_NAMES = ["", "cat", "dog", "bird"]


def tiny_section(**overrides: object) -> ModelSection:
    fields = dict(
        backbone="resnet_18",
        num_queries=10,
        num_select=5,
        num_feature_levels=2,
        return_interm_indices=[2, 3],
        hidden_dim=32,
        nheads=2,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=64,
        enc_n_points=2,
        dec_n_points=2,
        with_box_refine=True,
    )
    fields.update(overrides)
    return ModelSection(**fields)


def card(section: ModelSection | None = None, num_classes: int = NUM_CLASSES, names=CLASS_NAMES) -> ModelCard:
    section = section or tiny_section()
    return ModelCard(
        model=section, num_classes=num_classes, class_names=tuple(names), num_select=section.num_select
    )


@pytest.fixture(scope="module")
def tiny_model() -> DeformableDETR:
    torch.manual_seed(0)
    return DeformableDETR.from_config(tiny_section(), NUM_CLASSES)


def test_round_trip_keeps_everything(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "b.bias": torch.arange(4.0)}
    section = tiny_section(dropout_ratio=0.05)
    spec = {"model": section.model_dump(mode="json"), "results_dir": "/tmp/x"}
    written = card(section).evolve(mean=(0.5, 0.4, 0.3), shortest_side=640, quantization={"backend": "x"})
    path = save_checkpoint(
        tmp_path / "sub" / "m.pth", card=written, state_dict=state, spec=spec, extra={"epoch": 3}
    )
    assert path == tmp_path / "sub" / "m.pth"
    info = load_checkpoint(path)
    assert isinstance(info, LoadedCheckpoint)
    assert info.card == written and info.card.model == section and info.card.class_names == tuple(CLASS_NAMES)
    assert info.spec == spec and info.raw["epoch"] == 3 and info.path == path
    assert info.raw["format"] == "ddetr" and info.raw["format_version"] == 2 and info.raw["ddetr_version"]
    assert info.state_dict.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(info.state_dict[key], tensor)
    # written as plain data: readable with weights_only=True and no ddetr classes
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw["card"], dict) and raw["card"]["model"]["hidden_dim"] == 32


def test_reserved_entries_are_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "m.pth", card=card(), state_dict={}, extra={"card": 1})
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_leaves_the_final_path_untouched(tmp_path, monkeypatch):
    final = tmp_path / "model.pth"
    save_checkpoint(final, card=card(), state_dict={"w": torch.ones(2)})
    before = final.read_bytes()
    real_save = torch.save

    def crashing_save(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(10)  # half a file on disk, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(final, card=card(), state_dict={"w": torch.zeros(5)})
    assert final.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]  # no temporary file left behind
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(final).state_dict["w"], torch.ones(2))


def test_failure_on_first_write_creates_nothing(tmp_path, monkeypatch):
    def crashing_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "new.pth", card=card(), state_dict={})
    assert list(tmp_path.iterdir()) == []


def lightning_checkpoint(path: Path, state: dict[str, torch.Tensor], section: ModelSection) -> Path:
    """A checkpoint shaped like the one Lightning writes for our LightningModule."""
    payload = {
        "epoch": 2,
        "global_step": 30,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {
            **{f"model.{k}": v for k, v in state.items()},
            "criterion.empty_weight": torch.ones(NUM_CLASSES),
        },
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 3}}}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
        "lr_schedulers": [{"milestones": {40: 1}, "last_epoch": 2}],
        "ddetr": ckpt.lightning_entry(card(section), {"dataset": {"num_classes": NUM_CLASSES}}),
    }
    torch.save(payload, path)
    return path


def test_lightning_checkpoint_is_read(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    path = lightning_checkpoint(tmp_path / "epoch=2.ckpt", state, tiny_section())
    info = load_checkpoint(path)
    assert info.state_dict.keys() == state.keys()  # prefix stripped, criterion dropped
    assert all(torch.equal(info.state_dict[k], v) for k, v in state.items())
    assert info.card == card() and info.card.class_names == tuple(CLASS_NAMES)
    assert info.spec == {"dataset": {"num_classes": NUM_CLASSES}} and info.raw["global_step"] == 30
    model, _ = build_model_from_checkpoint(path)
    assert not model.training and model.card == card()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_build_model_from_checkpoint_uses_the_checkpoint_architecture(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.pth", card=card(), state_dict=tiny_model.state_dict())
    model, info = build_model_from_checkpoint(path)
    assert (
        isinstance(model, DeformableDETR) and model.num_queries == 10 and info.card.num_classes == NUM_CLASSES
    )
    images = torch.rand(1, 3, 64, 64)
    tiny_model.eval()
    with torch.no_grad():
        expected, got = tiny_model(images), model(images)
    assert torch.allclose(expected.pred_logits, got.pred_logits) and torch.allclose(
        expected.pred_boxes, got.pred_boxes
    )


def test_timm_backbone_trained_with_live_batch_norm_loads_for_evaluation(tmp_path):
    """model.freeze_backbone_bn=false with a timm backbone: training's batch norms keep num_batches_tracked,
    the evaluation model's frozen ones have no such counter; the checkpoint loads and gives training's
    eval-mode outputs (this stopped the demo's evaluate with a timm backbone)."""
    section = tiny_section(backbone="timm:resnet10t", freeze_backbone_bn=False)
    torch.manual_seed(0)
    trained = DeformableDETR.from_config(section, NUM_CLASSES).train()
    trained(torch.rand(2, 3, 64, 64))  # one training forward: the running statistics move
    state = trained.state_dict()
    assert any(key.endswith("num_batches_tracked") for key in state)
    path = save_checkpoint(tmp_path / "m.pth", card=card(section), state_dict=state)
    model, _ = build_model_from_checkpoint(path)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = trained.eval()(images), model(images)
    assert torch.allclose(expected.pred_boxes, got.pred_boxes, atol=1e-5)


def test_weights_of_another_architecture_name_the_mismatch(tmp_path, tiny_model):
    path = save_checkpoint(
        tmp_path / "m.pth",
        card=card(tiny_section(num_queries=12, with_box_refine=False)),
        state_dict=tiny_model.state_dict(),
    )
    with pytest.raises(CheckpointError) as err:
        build_model_from_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "unexpected keys: transformer.decoder.bbox_embed.0.layers.0.weight" in message
    assert "query_embed.weight: checkpoint [10, 64] vs model [12, 64]" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"garbage bytes", "not a readable PyTorch checkpoint"),
        ({"model": {"x": 1}, "args": None}, "original Deformable DETR release"),
        ([1, 2, 3], "found a list"),
        (
            {"state_dict": {"model.w": torch.ones(1)}},
            r"no ddetr metadata \(found top-level keys: state_dict\)",
        ),
        ({"format": "ddetr", "format_version": 99}, "format_version 99 is newer"),
        ({"format": "ddetr", "format_version": 1, "model": {}, "state_dict": {}}, "no 'num_classes'"),
        ({"format": "ddetr", "format_version": 2, "card": [1], "state_dict": {}}, "'card' entry that is not"),
        ({"format": "ddetr", "format_version": 2, "card": {"card_version": 9}}, "card version 9 is newer"),
        (
            {
                "format": "ddetr",
                "format_version": 2,
                "card": {"card_version": 2, "num_classes": 2, "model": {"hidden_dim": 0}},
            },
            r"model\.hidden_dim",
        ),
        (
            {"format": "ddetr", "format_version": 1, "model": {}, "num_classes": 2, "class_names": ["a"] * 3},
            "3 class names for num_classes=2",
        ),
    ],
)
def test_not_a_ddetr_checkpoint_is_one_line_error(tmp_path, content, expected):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=expected) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"absent\.pth: checkpoint file not found \(found nothing"):
        load_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="found a folder"):
        load_checkpoint(tmp_path)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": "ddetr", "payload": os.environ.__class__}, path)
    with pytest.raises(CheckpointError, match=r"refused: .*'os\._Environ'"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- encryption_key


def test_encrypted_checkpoint_round_trip_and_key_errors(tmp_path, tiny_model):
    import io
    import pickle

    state = tiny_model.state_dict()
    path = save_checkpoint(tmp_path / "enc.pth", card=card(), state_dict=state, encryption_key="s3cret")
    data = path.read_bytes()
    assert data.startswith(b"DDETRENC")
    with pytest.raises(
        pickle.UnpicklingError
    ):  # the bytes on disk really are encrypted: torch cannot read them
        torch.load(io.BytesIO(data), weights_only=True)

    model, info = build_model_from_checkpoint(path, encryption_key="s3cret")
    assert info.card.class_names == tuple(CLASS_NAMES) and info.card.encrypted
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0)

    with pytest.raises(CheckpointError, match="is encrypted; set encryption_key"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not match") as err:
        load_checkpoint(path, encryption_key="guess")
    assert "guess" not in str(err.value) and "s3cret" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.pth"]


def test_plain_checkpoint_loads_with_a_key(tmp_path):
    state = {"a.weight": torch.randn(3, 2)}
    path = save_checkpoint(tmp_path / "plain.pth", card=card(), state_dict=state)
    assert (
        torch.load(path, weights_only=True)["card"]["num_classes"] == NUM_CLASSES
    )  # plain when no key is given
    info = load_checkpoint(path, encryption_key="any key")
    torch.testing.assert_close(info.state_dict["a.weight"], state["a.weight"])
