"""Files written by ddetr before model cards (commit fb2e580: checkpoint format 1, ONNX metadata 1) still load.

``tests/assets/legacy/`` holds a checkpoint and its ONNX export made by that version, and the outputs that
version's model gave on fixed images (see the README there).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddetr.artefacts.checkpoint import load_checkpoint
from ddetr.artefacts.onnx_file import read_card
from ddetr.model.detector import build_model_from_checkpoint
from ddetr.runtime import load_predictor

LEGACY = Path(__file__).resolve().parents[1] / "assets" / "legacy"


def test_legacy_checkpoint_card_and_outputs() -> None:
    loaded = load_checkpoint(LEGACY / "legacy_v1.pth")
    card = loaded.card
    assert loaded.raw["format_version"] == 1
    assert card.class_names == ("", "cell", "blob") and card.num_classes == 3
    assert card.num_select == 7 and card.model.backbone == "timm:test_resnet"
    # preprocessing comes from the spec stored in the old checkpoint
    assert card.mean == (0.5, 0.4, 0.3) and card.std == (0.2, 0.25, 0.3)
    assert (card.shortest_side, card.max_size, card.input_size) == (96, 128, None)
    model, _ = build_model_from_checkpoint(LEGACY / "legacy_v1.pth")
    reference = torch.load(LEGACY / "legacy_v1_outputs.pt", weights_only=True)
    with torch.no_grad():
        out = model(reference["images"])
    torch.testing.assert_close(out.pred_logits, reference["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pred_boxes, reference["pred_boxes"], atol=1e-5, rtol=1e-5)


def test_legacy_onnx_card_and_outputs() -> None:
    card = read_card(LEGACY / "legacy_v1.onnx")
    assert card.class_names == ("", "cell", "blob") and card.input_size == (64, 48)
    assert card.mean == (0.5, 0.4, 0.3) and card.batch_size is None and not card.trt_plugin
    assert card.source.endswith("legacy_v1.pth")
    predictor = load_predictor(LEGACY / "legacy_v1.onnx")
    reference = torch.load(LEGACY / "legacy_v1_outputs.pt", weights_only=True)
    logits, boxes = predictor(reference["images"])
    torch.testing.assert_close(logits, reference["pred_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(boxes, reference["pred_boxes"], atol=1e-4, rtol=1e-4)
