"""Parity with Hugging Face transformers' DeformableDetrForObjectDetection (random weights, fp32, eval)."""

from __future__ import annotations

import pickle
import typing

import pytest
import torch
import transformers  # a test dependency: never skipped
from transformers.activations import ACT2CLS

from ddetr.errors import CheckpointError
from ddetr.model.detector import DeformableDETR
from ddetr.model.transformer import ACTIVATION_NAMES, FFN_ACTIVATIONS, LEARNED_ACTIVATIONS, XIELU
from ddetr.model.weights_hf import convert_hf_state_dict, model_section_from_hf_config
from ddetr.spec.sections import FfnActivation, ModelSection

TOLERANCE = 1e-4
SMALL = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=128, decoder_ffn_dim=128)


def _hf_model(seed: int = 0, **kwargs):
    if "backbone_config" not in kwargs and kwargs.get("use_timm_backbone", True):
        kwargs.setdefault("backbone", "resnet50")
        kwargs["use_timm_backbone"] = True
    config = transformers.DeformableDetrConfig(use_pretrained_backbone=False, **kwargs)
    torch.manual_seed(seed)
    model = transformers.DeformableDetrForObjectDetection(config).eval()
    # make every weight matter: the original init zeroes sampling/attention/box-output weights
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith(".weight"):
                buffer.uniform_(0.5, 1.0)
            elif name.endswith(".bias"):
                buffer.normal_(0.0, 0.1)
    return model


def _batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 96, 128, generator=generator)
    pixel_mask = torch.ones(2, 96, 128, dtype=torch.long)
    pixel_mask[1, 80:, :] = 0  # second image is 80 x 100
    pixel_mask[1, :, 100:] = 0
    images[1] = images[1] * pixel_mask[1]
    return images, pixel_mask


def _ours(hf_model, state_dict=None):
    state_dict = hf_model.state_dict() if state_dict is None else state_dict
    converted, section, num_classes = convert_hf_state_dict(state_dict, hf_model.config.to_dict())
    model = DeformableDETR.from_config(section, num_classes).eval()
    model.load_state_dict(converted, strict=True)
    return model


def _assert_parity(hf_model, model) -> None:
    images, pixel_mask = _batch()
    with torch.no_grad():
        expected = hf_model(pixel_values=images, pixel_mask=pixel_mask)
        actual = model(images, pixel_mask == 0)
    assert actual.pred_logits.shape == expected.logits.shape
    assert (actual.pred_logits - expected.logits).abs().max().item() <= TOLERANCE
    assert (actual.pred_boxes - expected.pred_boxes).abs().max().item() <= TOLERANCE
    if hf_model.config.two_stage:
        assert actual.enc_outputs is not None
        enc_class = (actual.enc_outputs.pred_logits - expected.enc_outputs_class).abs().max().item()
        enc_boxes = actual.enc_outputs.pred_boxes - expected.enc_outputs_coord_logits.sigmoid()
        assert enc_class <= TOLERANCE
        assert enc_boxes.abs().max().item() <= TOLERANCE


VARIANTS = {
    "single_scale": dict(SMALL, num_feature_levels=1, num_queries=30, num_labels=7),
    "multi_scale_full_default": dict(num_labels=91),
    "box_refine": dict(SMALL, with_box_refine=True, num_queries=40, num_labels=5),
    "two_stage_refine": dict(
        SMALL, with_box_refine=True, two_stage=True, num_queries=50, two_stage_num_proposals=50, num_labels=6
    ),
    "odd_3_levels_2_points": dict(
        SMALL, num_feature_levels=3, decoder_n_points=2, num_queries=50, num_labels=3
    ),
}


@pytest.mark.parametrize(
    "variant",
    # the full-size default config (256 wide, 6+6 layers) takes ~20 s: make test-slow
    [pytest.param(v, marks=pytest.mark.slow) if v == "multi_scale_full_default" else v for v in VARIANTS],
)
def test_matches_hf(variant: str, tmp_path) -> None:
    """HF folder -> `ddetr import_weights --source hf` -> checkpoint -> same outputs as HF."""
    from ddetr.cli import main

    hf_model = _hf_model(**VARIANTS[variant])
    hf_model.save_pretrained(tmp_path / "hf")
    output = tmp_path / "imported.pth"
    assert main(["import_weights", "--source", "hf", str(tmp_path / "hf"), str(output)]) == 0
    model = DeformableDETR.from_checkpoint(output).eval()
    assert model.num_classes == hf_model.config.num_labels
    assert model.model_config.with_box_refine == hf_model.config.with_box_refine
    assert model.model_config.num_feature_levels == hf_model.config.num_feature_levels
    _assert_parity(hf_model, model)


def test_matches_hf_from_save_pretrained_files(tmp_path) -> None:
    from safetensors.torch import load_file

    hf_model = _hf_model(**VARIANTS["two_stage_refine"])
    hf_model.save_pretrained(tmp_path)
    state_dict = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("model.backbone.conv_encoder.") for k in state_dict)  # the Hub's layout
    _assert_parity(hf_model, _ours(hf_model, state_dict))


def test_tied_heads_restored_from_save_pretrained(tmp_path) -> None:
    from safetensors.torch import load_file

    hf_model = _hf_model(**VARIANTS["single_scale"])
    hf_model.save_pretrained(tmp_path)
    _assert_parity(hf_model, _ours(hf_model, load_file(str(tmp_path / "model.safetensors"))))


def test_unknown_and_missing_keys_are_errors() -> None:
    hf_model = _hf_model(**VARIANTS["single_scale"])
    config = hf_model.config.to_dict()
    state_dict = dict(hf_model.state_dict())
    with pytest.raises(CheckpointError, match=r"unknown keys model.something_else"):
        convert_hf_state_dict({**state_dict, "model.something_else": torch.zeros(1)}, config)
    del state_dict["model.level_embed"]
    with pytest.raises(CheckpointError, match=r"missing keys.*transformer.level_embed"):
        convert_hf_state_dict(state_dict, config)


def test_backbone_other_than_timm_or_resnet_is_rejected() -> None:
    config = {"backbone_config": {"model_type": "swin"}, "num_labels": 3}
    with pytest.raises(CheckpointError, match=r"model_type 'swin'"):
        convert_hf_state_dict({}, config)


# ------------------------------------ transformers' own ResNet backbone (use_timm_backbone=False), learned positions


def _hf_resnet(layer_type: str, depths: list[int], stages: list[int], **changes):
    widths = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    return transformers.ResNetConfig(
        layer_type=layer_type,
        depths=depths,
        hidden_sizes=widths,
        out_features=[f"stage{i}" for i in stages],
        **changes,
    )


HF_RESNETS = {
    "resnet_18": ("basic", [2, 2, 2, 2]),
    "resnet_34": ("basic", [3, 4, 6, 3]),
    "resnet_50": ("bottleneck", [3, 4, 6, 3]),
    "resnet_101": ("bottleneck", [3, 4, 23, 3]),
}


@pytest.mark.parametrize(
    ("name", "stages", "levels", "position"),
    [
        ("resnet_18", [2, 3, 4], 4, "learned"),
        ("resnet_34", [4], 1, "sine"),
        ("resnet_50", [2, 3, 4], 4, "sine"),
        ("resnet_101", [4], 3, "learned"),
    ],
)
def test_transformers_resnet_backbone_matches_hf(
    name: str, stages: list[int], levels: int, position: str, tmp_path
) -> None:
    """use_timm_backbone=False: HF's ResNet renamed onto torchvision's, through `ddetr import_weights`."""
    from ddetr.cli import main

    hf_model = _hf_model(
        **dict(SMALL, num_feature_levels=levels, num_queries=20, num_labels=4, with_box_refine=levels > 1),
        use_timm_backbone=False,
        backbone_config=_hf_resnet(*HF_RESNETS[name], stages),
        position_embedding_type=position,
    )
    hf_model.save_pretrained(tmp_path / "hf")
    output = tmp_path / "imported.pth"
    assert main(["import_weights", "--source", "hf", str(tmp_path / "hf"), str(output)]) == 0
    model = DeformableDETR.from_checkpoint(output).eval()
    assert model.model_config.backbone == name
    assert model.model_config.return_interm_indices[: len(stages)] == [i - 1 for i in stages]
    assert model.model_config.position_embedding == position
    assert type(model.position_embedding).__name__ == f"PositionEmbedding{position.title()}"
    _assert_parity(hf_model, model)
    _assert_parity(hf_model, _ours(hf_model))  # transformers' in-memory layout too


def test_learned_position_embedding_with_timm_backbone_matches_hf() -> None:
    hf_model = _hf_model(
        **dict(SMALL, num_queries=20, num_labels=4, position_embedding_type="learned"), backbone="resnet18"
    )
    model = _ours(hf_model)
    assert model.model_config.position_embedding == "learned"
    hf_table = hf_model.model.position_embedding.column_embeddings.weight
    assert torch.equal(model.position_embedding.col_embed.weight, hf_table)
    _assert_parity(hf_model, model)


def test_default_transformers_resnet_without_backbone_config() -> None:
    """use_timm_backbone=False alone: transformers builds its default ResNet-50 giving the last stage."""
    section, _ = model_section_from_hf_config({"use_timm_backbone": False, "num_feature_levels": 4})
    assert section.backbone == "resnet_50" and section.return_interm_indices == [3, 4, 5, 6]
    with pytest.raises(CheckpointError, match=r"backbone='microsoft/resnet-50'"):
        model_section_from_hf_config({"use_timm_backbone": False, "backbone": "microsoft/resnet-50"})


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (dict(downsample_in_bottleneck=True), "downsample_in_bottleneck=True"),
        (dict(downsample_in_first_stage=True), "downsample_in_first_stage=True"),
        (dict(hidden_act="gelu"), "hidden_act='gelu'"),
        (dict(embedding_size=32), "embedding_size=32"),
        (dict(depths=[1, 1, 1, 1]), r"depths=\[1, 1, 1, 1\]"),
    ],
)
def test_resnet_variants_torchvision_lacks_are_one_line_errors(changes: dict, named: str) -> None:
    backbone = _hf_resnet("bottleneck", changes.pop("depths", [3, 4, 6, 3]), [4], **changes).to_dict()
    config = {"use_timm_backbone": False, "backbone_config": backbone, "num_feature_levels": 1}
    with pytest.raises(CheckpointError, match=named) as info:
        model_section_from_hf_config(config)
    assert "\n" not in str(info.value) and "ResNet-18/34/50/101" in str(info.value)


def test_resnet_stem_features_are_refused() -> None:
    backbone = {"model_type": "resnet", "out_indices": [0, 4]}
    with pytest.raises(CheckpointError, match=r"stem"):
        model_section_from_hf_config({"backbone_config": backbone, "num_feature_levels": 2})


def test_unknown_position_embedding_is_refused() -> None:
    with pytest.raises(CheckpointError, match=r"position_embedding_type='rope'"):
        model_section_from_hf_config({"position_embedding_type": "rope"})


# ------------------------------------------- every config transformers builds: FFN widths, activations, kernels
# activations whose module holds learned parameters: one module per encoder/decoder layer
LEARNED = {"prelu", "xielu"}


def test_every_hf_activation_is_implemented() -> None:
    assert set(LEARNED_ACTIVATIONS) == LEARNED
    assert set(typing.get_args(FfnActivation)) == set(ACTIVATION_NAMES) == set(ACT2CLS)
    assert set(ACT2CLS) - LEARNED == set(FFN_ACTIVATIONS)


def test_every_activation_matches_hf_elementwise() -> None:
    from transformers.activations import ACT2FN

    from ddetr.model.transformer import DeformableTransformerDecoderLayer

    x = torch.linspace(-12.0, 12.0, 4001)
    for name, function in FFN_ACTIVATIONS.items():
        assert (function(x) - ACT2FN[name](x)).abs().max().item() <= 1e-5, name
        layer = DeformableTransformerDecoderLayer(32, 48, 0.0, 1, 2, 2, name)
        assert pickle.loads(pickle.dumps(layer)).activation == name  # DDP spawn and torch.save pickle models
    for name in LEARNED:
        layer = DeformableTransformerDecoderLayer(32, 48, 0.0, 1, 2, 2, name)
        copy = pickle.loads(pickle.dumps(layer))
        assert copy.activation == name and isinstance(copy.activation_fn, LEARNED_ACTIVATIONS[name])


def test_xielu_matches_hf_elementwise() -> None:
    """Same parameters (fp32 on both sides, non-default) -> same values, on both branches and near 0."""
    from transformers.activations import XIELUActivation

    theirs = XIELUActivation(alpha_p_init=1.3, alpha_n_init=0.9, beta=0.4, dtype=torch.float32)
    ours = XIELU(alpha_p_init=1.3, alpha_n_init=0.9, beta=0.4)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"alpha_p", "alpha_n", "beta", "eps"}
    for key, value in theirs.state_dict().items():
        assert torch.allclose(ours.state_dict()[key], value, atol=1e-6), key
    x = torch.cat([torch.linspace(-12.0, 12.0, 4001), torch.tensor([-1e-6, -1e-7, 0.0, 1e-7])])
    assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5
    default = XIELU()(x)
    assert (default - XIELUActivation(dtype=torch.float32)(x)).abs().max().item() <= 1e-5
    assert (default - ours(x)).abs().max().item() > 0.1  # the parameters matter


def _randomise_learned_activations(hf_model) -> int:
    """Set every prelu/xielu parameter of ``hf_model`` to its own random non-default value -> their count."""
    generator = torch.Generator().manual_seed(3)
    count = 0
    with torch.no_grad():
        for name, parameter in hf_model.named_parameters():
            if ".activation_fn." in name:
                values = torch.rand(parameter.shape, generator=generator) * 1.5 - 0.5
                parameter.copy_(values.to(parameter.dtype))
                count += 1
    return count


@pytest.mark.parametrize("activation", sorted(LEARNED))
def test_learned_activation_parity(activation: str) -> None:
    """HF's per-layer PReLU / xIELU parameters (random, different in every layer) map onto ours exactly."""
    hf_model = _hf_model(
        **dict(SMALL, num_feature_levels=1, num_queries=20, num_labels=4, activation_function=activation),
        backbone="resnet18",
    )
    per_layer = 1 if activation == "prelu" else 2
    assert _randomise_learned_activations(hf_model) == 4 * per_layer  # 2 encoder + 2 decoder layers
    model = _ours(hf_model)
    assert model.model_config.activation == activation
    layers = [*model.transformer.encoder.layers, *model.transformer.decoder.layers]
    hf_layers = [*hf_model.model.encoder.layers, *hf_model.model.decoder.layers]
    for layer, hf_layer in zip(layers, hf_layers, strict=True):
        assert isinstance(layer.activation_fn, LEARNED_ACTIVATIONS[activation])
        assert all(p.dtype == torch.float32 for p in layer.activation_fn.state_dict().values())
        if activation == "prelu":
            assert torch.equal(layer.activation_fn.weight, hf_layer.mlp.activation_fn.weight)
        # xIELU: HF computes its coefficients in bfloat16, ours reproduce them in fp32 (not just ~1e-2 close)
        x = torch.linspace(-12.0, 12.0, 2001)
        with torch.no_grad():
            assert (layer.activation_fn(x) - hf_layer.mlp.activation_fn(x)).abs().max().item() <= 1e-5
    values = [p.item() for layer in layers for p in layer.activation_fn.parameters()]
    assert len(set(values)) == len(values)  # a mix-up between layers would show
    _assert_parity(hf_model, model)


@pytest.mark.parametrize("activation", ["gelu", "silu", "quick_gelu", "gelu_new"])
def test_activation_parity(activation: str) -> None:
    hf_model = _hf_model(
        **dict(SMALL, num_feature_levels=1, num_queries=20, num_labels=4, activation_function=activation),
        backbone="resnet18",  # small: one model per activation
    )
    model = _ours(hf_model)
    assert model.model_config.activation == activation
    assert all(layer.activation == activation for layer in model.transformer.encoder.layers)
    _assert_parity(hf_model, model)


@pytest.mark.parametrize(
    "variant",
    [
        dict(
            encoder_ffn_dim=96,
            decoder_ffn_dim=160,
            encoder_attention_heads=8,
            decoder_attention_heads=4,
            with_box_refine=True,
            disable_custom_kernels=True,
        ),
        dict(
            encoder_ffn_dim=160,
            decoder_ffn_dim=48,
            activation_function="gelu",
            two_stage=True,
            with_box_refine=True,
            two_stage_num_proposals=30,
            disable_custom_kernels=False,
        ),
        dict(encoder_ffn_dim=64, decoder_ffn_dim=96, activation_function="xielu"),
    ],
    ids=["enc96_dec160_heads8_4_refine_nokernels", "enc160_dec48_gelu_two_stage", "enc64_dec96_xielu"],
)
def test_separate_encoder_and_decoder_ffn_widths(variant: dict, tmp_path) -> None:
    """HF folder -> `ddetr import_weights --source hf` -> checkpoint whose card carries both widths."""
    from ddetr.artefacts.checkpoint import load_checkpoint
    from ddetr.cli import main

    config = dict(SMALL, num_queries=30, num_labels=5)
    config.update(variant)
    hf_model = _hf_model(**config)
    _randomise_learned_activations(hf_model)
    hf_model.save_pretrained(tmp_path / "hf")
    output = tmp_path / "imported.pth"
    assert main(["import_weights", "--source", "hf", str(tmp_path / "hf"), str(output)]) == 0
    card = load_checkpoint(output).card
    assert card.model.dim_feedforward == variant["encoder_ffn_dim"]
    assert card.model.dec_dim_feedforward == variant["decoder_ffn_dim"]
    assert card.model.activation == variant.get("activation_function", "relu")
    heads = variant.get("decoder_attention_heads", 8)
    assert card.model.dec_nheads == (None if heads == 8 else heads)
    model = DeformableDETR.from_checkpoint(output).eval()
    assert model.transformer.decoder.layers[0].linear1.out_features == variant["decoder_ffn_dim"]
    assert model.transformer.decoder.layers[0].cross_attn.n_heads == heads
    assert model.transformer.decoder.layers[0].self_attn.num_heads == heads
    _assert_parity(hf_model, model)


def test_unknown_activation_is_one_line_error() -> None:
    with pytest.raises(CheckpointError, match=r"activation_function='rrelu'.*prelu, xielu") as info:
        model_section_from_hf_config({"activation_function": "rrelu"})
    assert "\n" not in str(info.value)


def test_section_with_one_width_and_relu_is_the_default() -> None:
    section = ModelSection()
    assert section.dec_dim_feedforward is None and section.activation == "relu" and section.dec_nheads is None
    assert {"dec_dim_feedforward", "activation", "dec_nheads"} <= set(ModelSection.ARCHITECTURE_FIELDS)


def test_decoder_heads_must_divide_hidden_dim() -> None:
    from ddetr.errors import SpecError
    from ddetr.spec.load import load_spec

    with pytest.raises(SpecError, match=r"model\.dec_nheads=3"):
        load_spec(None, ["model.dec_nheads=3"])


# ------------------------------------------------ Hub ids through huggingface_hub's cache (offline, never fetched)

HUB_ID = "SenseTime/deformable-detr-with-box-refine"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding a tiny random model under HUB_ID, in offline mode; returns the HF model."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    hf_model = _hf_model(**VARIANTS["box_refine"])
    hf_model.save_pretrained(repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_model


def test_import_weights_from_a_cached_hub_id(hf_cache, tmp_path) -> None:
    from ddetr.cli import main

    output = tmp_path / "imported.pth"
    assert main(["import_weights", "--source", "hf", f"hf:{HUB_ID}", str(output)]) == 0
    model = DeformableDETR.from_checkpoint(output).eval()
    assert model.model_config.with_box_refine and model.num_classes == hf_cache.config.num_labels
    _assert_parity(hf_cache, model)


def test_pretrained_model_path_takes_a_hub_id(hf_cache) -> None:
    from ddetr.model.weights import import_hf
    from ddetr.tasks.train import load_pretrained

    converted, section, num_classes, _ = import_hf(f"hf:{HUB_ID}")
    model = DeformableDETR.from_config(section, num_classes)
    load_pretrained(model, f"hf:{HUB_ID}@main")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in converted.items())
    _assert_parity(hf_cache, model.eval())


def test_unknown_hub_id_is_one_line_error_naming_it(hf_cache, capsys) -> None:
    from ddetr.cli import main
    from ddetr.model.weights import resolve_hf_hub_id

    with pytest.raises(
        CheckpointError, match=r"hf:SenseTime/not-cached: model 'SenseTime/not-cached' is not in"
    ):
        resolve_hf_hub_id("hf:SenseTime/not-cached")
    assert main(["import_weights", "--source", "hf", "hf:SenseTime/not-cached", "out.pth"]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "hf:SenseTime/not-cached" in err[0] and "HF_HUB_OFFLINE" in err[0]
    with pytest.raises(CheckpointError, match=r"hf:<org>/<name>"):
        resolve_hf_hub_id("hf:no-org")
