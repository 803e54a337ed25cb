"""DeformableDETR: output shapes, variants, head sharing, padding handling, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from ddetr.errors import SpecError
from ddetr.model import detector as detector_module
from ddetr.model.detector import DeformableDETR
from ddetr.model.msda import MSDeformAttn
from ddetr.model.outputs import DetectionOutput
from ddetr.model.position import LEARNED_POSITIONS, PositionEmbeddingLearned, PositionEmbeddingSine
from ddetr.model.transformer import DeformableTransformer
from ddetr.spec.sections import ModelSection

NUM_CLASSES = 3


def _section(**kwargs) -> ModelSection:
    tiny = dict(
        backbone="resnet_18",
        hidden_dim=32,
        nheads=4,
        enc_layers=1,
        dec_layers=3,
        dim_feedforward=64,
        num_queries=10,
        num_select=5,
        dropout_ratio=0.0,
    )
    return ModelSection(**{**tiny, **kwargs})


def _model(**kwargs) -> DeformableDETR:
    torch.manual_seed(0)
    return DeformableDETR.from_config(_section(**kwargs), NUM_CLASSES).eval()


def test_multi_scale_refine_output_shapes() -> None:
    model = _model()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, DetectionOutput)
    assert out.pred_logits.shape == (2, 10, NUM_CLASSES)
    assert out.pred_boxes.shape == (2, 10, 4)
    assert ((out.pred_boxes >= 0) & (out.pred_boxes <= 1)).all()
    assert len(out.aux_outputs) == 2
    assert all(
        a.pred_logits.shape == (2, 10, NUM_CLASSES) and a.pred_boxes.shape == (2, 10, 4)
        for a in out.aux_outputs
    )
    assert out.enc_outputs is None
    assert model.num_classes == NUM_CLASSES and model.model_config.num_queries == 10


def test_without_aux_loss_no_aux_outputs() -> None:
    with torch.no_grad():
        out = _model(aux_loss=False)(torch.randn(1, 3, 64, 96))
    assert out.aux_outputs == []


def test_single_scale() -> None:
    model = _model(num_feature_levels=1, return_interm_indices=[3], with_box_refine=False)
    assert len(model.input_proj) == 1 and model.input_proj[0][0].in_channels == 512
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.pred_logits.shape == (1, 10, NUM_CLASSES)


@pytest.mark.parametrize("training", [False, True])
def test_two_stage_encoder_outputs_in_train_and_eval(training: bool) -> None:
    model = _model(two_stage=True)
    model.train(training)
    out = model(torch.randn(2, 3, 64, 64))
    tokens = 8 * 8 + 4 * 4 + 2 * 2 + 1 * 1
    assert out.enc_outputs is not None
    assert out.enc_outputs.pred_logits.shape == (2, tokens, NUM_CLASSES)
    assert out.enc_outputs.pred_boxes.shape == (2, tokens, 4)
    assert out.pred_logits.shape == (2, 10, NUM_CLASSES)
    assert len(out.aux_outputs) == 2


def test_state_dict_layout_and_head_sharing() -> None:
    refine = _model()
    keys = refine.state_dict().keys()
    assert "backbone.body.layer1.0.conv1.weight" in keys
    assert "transformer.decoder.layers.0.self_attn.in_proj_weight" in keys
    assert "transformer.decoder.bbox_embed.2.layers.2.bias" in keys
    assert "transformer.reference_points.weight" in keys and "query_embed.weight" in keys
    assert refine.transformer.decoder.bbox_embed is refine.bbox_embed
    assert refine.class_embed[0] is not refine.class_embed[1]
    assert torch.allclose(refine.bbox_embed[0].layers[-1].bias[2:], torch.tensor(-2.0))
    assert torch.count_nonzero(refine.bbox_embed[1].layers[-1].bias) == 0
    assert torch.allclose(refine.class_embed[2].bias, torch.tensor(-math.log(99.0)))

    shared = _model(with_box_refine=False)
    assert shared.class_embed[0] is shared.class_embed[2] and shared.bbox_embed[0] is shared.bbox_embed[1]
    assert shared.transformer.decoder.bbox_embed is None
    assert "bbox_embed.2.layers.0.weight" in shared.state_dict()

    two_stage = _model(two_stage=True)
    assert (
        len(two_stage.class_embed) == 4 and two_stage.transformer.decoder.class_embed is two_stage.class_embed
    )
    assert "transformer.enc_output.weight" in two_stage.state_dict() and not hasattr(two_stage, "query_embed")
    assert all(torch.count_nonzero(h.layers[-1].bias) == 0 for h in two_stage.bbox_embed)


def test_learned_position_embedding_layout_and_size_limit() -> None:
    """model.position_embedding=learned: column then row tables, padding ignored, maps up to 50x50."""
    model = _model(position_embedding="learned", num_feature_levels=1, return_interm_indices=[3])
    embedding = model.position_embedding
    assert isinstance(embedding, PositionEmbeddingLearned)
    assert {"position_embedding.row_embed.weight", "position_embedding.col_embed.weight"} <= set(
        model.state_dict()
    )
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[1, :, 4:] = True
    pos = embedding(mask)  # (B, 32, 3, 5)
    assert pos.shape == (2, 32, 3, 5) and torch.equal(pos[0], pos[1])
    assert torch.equal(pos[0, :16, 2, 4], embedding.col_embed.weight[4])
    assert torch.equal(pos[0, 16:, 2, 4], embedding.row_embed.weight[2])
    assert isinstance(_model().position_embedding, PositionEmbeddingSine)  # the default
    with torch.no_grad():
        model(torch.randn(1, 3, 32 * LEARNED_POSITIONS, 64))  # a 50x2 map at stride 32
        with pytest.raises(SpecError, match=r"51x2 feature map is larger than the 50x50 learned table"):
            model(torch.randn(1, 3, 32 * (LEARNED_POSITIONS + 1), 64))


def test_mask_none_means_no_padding() -> None:
    model = _model()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model(images)
        b = model(images, torch.zeros(2, 64, 64, dtype=torch.bool))
    assert torch.equal(a.pred_logits, b.pred_logits) and torch.equal(a.pred_boxes, b.pred_boxes)


def test_padded_image_in_a_batch_equals_it_alone_padded() -> None:
    """No leakage across the batch: each image's result depends only on its own pixels and mask."""
    model = _model(two_stage=True)
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[0, 64:, :] = True
    mask[0, :, 64:] = True
    images[0][mask[0].expand(3, -1, -1)] = 0.0
    with torch.no_grad():
        batch = model(images, mask)
        alone = model(images[:1], mask[:1])
    assert (batch.pred_logits[0] - alone.pred_logits[0]).abs().max() <= 1e-4
    assert (batch.pred_boxes[0] - alone.pred_boxes[0]).abs().max() <= 1e-4


def test_transformer_ignores_padding() -> None:
    """Features alone vs the same features padded (garbage in the padding) give the same decoding."""
    torch.manual_seed(0)
    transformer = DeformableTransformer(
        d_model=32,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=64,
        dropout=0.0,
        num_feature_levels=3,
    ).eval()
    for module in transformer.modules():  # non-trivial sampling offsets and attention weights
        if hasattr(module, "sampling_offsets"):
            torch.nn.init.normal_(module.sampling_offsets.weight, std=0.05)
            torch.nn.init.normal_(module.attention_weights.weight, std=0.05)
    position = PositionEmbeddingSine(16)
    query_embed = torch.randn(7, 64)
    alone_shapes, padded_shapes = [(8, 6), (4, 3), (2, 2)], [(12, 10), (6, 5), (3, 3)]
    srcs_alone, srcs_padded, masks_alone, masks_padded = [], [], [], []
    for (h, w), (ph, pw) in zip(alone_shapes, padded_shapes):
        src = torch.randn(1, 32, h, w)
        padded = torch.randn(1, 32, ph, pw) * 10
        padded[:, :, :h, :w] = src
        mask = torch.ones(1, ph, pw, dtype=torch.bool)
        mask[:, :h, :w] = False
        srcs_alone.append(src)
        masks_alone.append(torch.zeros(1, h, w, dtype=torch.bool))
        srcs_padded.append(padded)
        masks_padded.append(mask)
    with torch.no_grad():
        a = transformer(srcs_alone, masks_alone, [position(m) for m in masks_alone], query_embed)
        b = transformer(srcs_padded, masks_padded, [position(m) for m in masks_padded], query_embed)
    assert (a.hidden_states - b.hidden_states).abs().max() <= 1e-4
    # reference points are relative to the valid image in both cases
    assert (a.init_reference - b.init_reference).abs().max() <= 1e-6


@pytest.mark.parametrize(
    ("fields", "num_classes", "message"),
    [
        (
            dict(num_feature_levels=3),
            NUM_CLASSES,
            "return_interm_indices.*4 entries.*num_feature_levels is 3",
        ),
        (dict(num_select=30), NUM_CLASSES, "num_select: 30 must be < .*10 \\* 3"),
        (dict(hidden_dim=64, nheads=6), NUM_CLASSES, "hidden_dim: 64 .*nheads=6"),
        (dict(hidden_dim=48, nheads=4), NUM_CLASSES, "hidden_dim: 48 .* multiple of 32"),
        (dict(two_stage=True, with_box_refine=False), NUM_CLASSES, "two_stage.*with_box_refine"),
        (dict(return_interm_indices=[3, 1, 2, 4]), NUM_CLASSES, "return_interm_indices: \\[3, 1, 2, 4\\]"),
        (dict(return_interm_indices=[1, 2, 3, 5]), NUM_CLASSES, "return_interm_indices"),
        (dict(backbone="resnet_7"), NUM_CLASSES, "model.backbone.*resnet_7.*resnet_18"),
        ({}, 0, "num_classes"),
    ],
)
def test_bad_config_is_a_spec_error_before_building(monkeypatch, fields, num_classes, message) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("a module was built before validation")

    monkeypatch.setattr(detector_module, "build_backbone", fail)
    monkeypatch.setattr(detector_module, "DeformableTransformer", fail)
    with pytest.raises(SpecError, match=message):
        DeformableDETR.from_config(_section(**fields), num_classes)


def test_exports_to_onnx_and_matches_onnxruntime(tmp_path) -> None:
    import onnxruntime as ort

    class Wrapper(torch.nn.Module):
        def __init__(self, model: DeformableDETR) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(images)
            return out.pred_logits, out.pred_boxes

    wrapper = Wrapper(_model(two_stage=True, enc_layers=1, dec_layers=1)).eval()
    images = torch.randn(1, 3, 64, 96)
    path = tmp_path / "model.onnx"
    torch.onnx.export(wrapper, (images,), str(path), input_names=["inputs"], dynamo=False, opset_version=17)
    wrapper.eval()  # the exporter restores the wrapper's mode
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(None, {"inputs": images.numpy()})
    with torch.no_grad():
        expected_logits, expected_boxes = wrapper(images)
    assert abs(logits - expected_logits.numpy()).max() <= 1e-4
    assert abs(boxes - expected_boxes.numpy()).max() <= 1e-4


@pytest.mark.parametrize("two_stage", [False, True])
def test_inference_fast_paths_equal_the_training_path(two_stage: bool) -> None:
    """no_grad runs the gather MSDA and a channels-last backbone; with grad, the grid_sample reference."""
    model = _model(two_stage=two_stage, with_box_refine=True, num_queries=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MSDeformAttn):
                module.sampling_offsets.weight.normal_(0, 0.2)
                module.attention_weights.weight.normal_(0, 0.2)
    images = torch.randn(2, 3, 64, 80)
    mask = torch.zeros(2, 64, 80, dtype=torch.bool)
    mask[1, 40:, :] = True
    with torch.no_grad():
        fast = model(images, mask)
    images.requires_grad_(True)  # forces the autograd (reference) path everywhere
    slow = model(images, mask)
    assert slow.pred_logits.requires_grad
    assert torch.allclose(fast.pred_logits, slow.pred_logits, atol=1e-4)
    assert torch.allclose(fast.pred_boxes, slow.pred_boxes, atol=1e-4)


@pytest.mark.parametrize("activation", ["prelu", "xielu"])
def test_learned_activation_trains_and_round_trips_a_checkpoint(activation: str, tmp_path) -> None:
    """prelu/xielu: a module with its own parameters in every layer; training moves them, checkpoints keep them."""
    from ddetr.artefacts.card import ModelCard
    from ddetr.artefacts.checkpoint import save_checkpoint
    from ddetr.model.criterion import build_criterion

    section = _section(activation=activation)
    model = _model(activation=activation).train()
    layers = [*model.transformer.encoder.layers, *model.transformer.decoder.layers]
    keys = [k for k in model.state_dict() if ".activation_fn." in k]
    per_layer = {"prelu": {"weight"}, "xielu": {"alpha_p", "alpha_n", "beta", "eps"}}[activation]
    assert {k.rsplit(".", 1)[1] for k in keys} == per_layer and len(keys) == len(per_layer) * len(layers)
    learned = [p for layer in layers for p in layer.activation_fn.parameters()]
    before = [p.detach().clone() for p in learned]
    criterion = build_criterion(section, NUM_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]])},
        {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.3, 0.6, 0.2, 0.2], [0.7, 0.3, 0.3, 0.2]])},
    ]
    for _ in range(3):
        losses = criterion(model(images), targets)
        optimizer.zero_grad()
        criterion.weighted_total(losses).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned)
        optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, learned, strict=True))

    card = ModelCard(section, NUM_CLASSES, ("", "a", "b"), num_select=section.num_select)
    path = save_checkpoint(tmp_path / "m.pth", card=card, state_dict=model.state_dict())
    model.eval()
    loaded = DeformableDETR.from_checkpoint(path).eval()
    assert loaded.model_config.activation == activation
    for key in keys:
        assert torch.equal(loaded.state_dict()[key], model.state_dict()[key]), key
    with torch.no_grad():
        expected, actual = model(images), loaded(images)
    assert torch.equal(actual.pred_logits, expected.pred_logits)
    assert torch.equal(actual.pred_boxes, expected.pred_boxes)
