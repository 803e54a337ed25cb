"""Backbones: stages, channels, strides, masks, freezing, timm, pretrained weights."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from ddetr.errors import CheckpointError, SpecError
from ddetr.model.backbone import BatchNormConv2d, build_backbone, fold_frozen_batch_norms, split_levels
from ddetr.spec.sections import ModelSection


def _section(**kwargs) -> ModelSection:
    defaults = dict(backbone="resnet_18", return_interm_indices=[1, 2, 3], num_feature_levels=3)
    return ModelSection(**{**defaults, **kwargs})


def test_split_levels() -> None:
    assert split_levels([1, 2, 3, 4]) == ([1, 2, 3], 1)
    assert split_levels([3]) == ([3], 0)
    assert split_levels([0, 1, 2, 3, 4]) == ([0, 1, 2, 3], 1)


def test_resnet18_stages_channels_strides_and_masks() -> None:
    backbone = build_backbone(_section(return_interm_indices=[0, 1, 2, 3, 4], num_feature_levels=5))
    assert backbone.num_channels == [64, 128, 256, 512]
    assert backbone.strides == [4, 8, 16, 32]
    images = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 64:] = True
    out = backbone(images, mask)
    assert [tuple(f.shape) for f, _ in out] == [
        (2, c, 64 // s, 96 // s) for c, s in zip([64, 128, 256, 512], [4, 8, 16, 32])
    ]
    for (_, level_mask), stride in zip(out, [4, 8, 16, 32]):
        assert level_mask.dtype == torch.bool and level_mask.shape == (2, 64 // stride, 96 // stride)
        assert not level_mask[0].any()
        assert level_mask[1, :, : 64 // stride].logical_not().all() and level_mask[1, :, 64 // stride :].all()


def test_resnet50_channels_and_dilation_stride() -> None:
    with torch.device("meta"):
        backbone = build_backbone(_section(backbone="resnet_50", dilation=True))
    assert backbone.num_channels == [512, 1024, 2048]
    assert backbone.strides == [8, 16, 16]
    assert backbone.body.layer4[0].conv2.dilation == (1, 1) and backbone.body.layer4[1].conv2.dilation == (
        2,
        2,
    )


def test_dilation_on_basic_block_resnet_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"model.dilation"):
        build_backbone(_section(dilation=True))


def test_frozen_parameters_and_torchvision_names() -> None:
    backbone = build_backbone(_section(return_interm_indices=[3], num_feature_levels=1))
    names = dict(backbone.named_parameters())
    assert "body.layer1.0.conv1.weight" in names and "body.layer4.1.conv2.weight" in names
    assert not names["body.conv1.weight"].requires_grad
    assert not names["body.layer1.0.conv1.weight"].requires_grad
    assert names["body.layer2.0.conv1.weight"].requires_grad
    assert names["body.layer4.1.conv2.weight"].requires_grad
    assert isinstance(backbone.body.bn1, FrozenBatchNorm2d)
    assert "fc.weight" not in backbone.body.state_dict()
    frozen = build_backbone(_section(train_backbone=False))
    assert not any(p.requires_grad for p in frozen.parameters())


def test_timm_backbone() -> None:
    backbone = build_backbone(_section(backbone="timm:resnet18"))
    assert backbone.num_channels == [128, 256, 512]
    assert backbone.strides == [8, 16, 32]
    out = backbone(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    assert [tuple(f.shape) for f, _ in out] == [(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    assert [tuple(m.shape) for _, m in out] == [(1, 8, 8), (1, 4, 4), (1, 2, 2)]


def test_gc_vit_smallest() -> None:
    backbone = build_backbone(_section(backbone="gc_vit_xxtiny"))
    assert backbone.num_channels == [128, 256, 512]
    assert backbone.strides == [8, 16, 32]
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 224, 224), torch.zeros(1, 224, 224, dtype=torch.bool))
    assert [tuple(f.shape) for f, _ in out] == [(1, 128, 28, 28), (1, 256, 14, 14), (1, 512, 7, 7)]


@pytest.mark.parametrize("name", ["resnet_152", "timm:no_such_net_xyz", "gc_vit_large"])
def test_unknown_backbone_is_a_spec_error(name: str) -> None:
    with pytest.raises(SpecError, match=r"model.backbone") as info:
        build_backbone(_section(backbone=name))
    assert name.removeprefix("timm:") in str(info.value)


def test_unknown_backbone_message_lists_valid_names() -> None:
    with pytest.raises(SpecError, match=r"resnet_50.*gc_vit_xxtiny"):
        build_backbone(_section(backbone="vgg16"))


def test_pretrained_backbone_path_loads_torchvision_weights(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)  # includes fc.* and num_batches_tracked
    with caplog.at_level(logging.INFO, logger="ddetr.model.backbone"):
        backbone = build_backbone(_section(pretrained_backbone_path=str(path)))
    assert torch.equal(backbone.body.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(backbone.body.bn1.running_var, source.bn1.running_var)
    lines = [r.getMessage() for r in caplog.records if "r18.pth" in r.getMessage()]
    assert len(lines) == 1 and "missing" in lines[0] and "unexpected" in lines[0]


def test_pretrained_backbone_path_accepts_timm_names_in_a_wrapper(tmp_path) -> None:
    import timm

    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "timm_r18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    backbone = build_backbone(_section(backbone="timm:resnet18", pretrained_backbone_path=str(path)))
    assert torch.equal(backbone.body.layer2[0].conv1.weight, source.layer2[0].conv1.weight)


def test_pretrained_backbone_shape_mismatch_is_a_checkpoint_error(tmp_path) -> None:
    path = tmp_path / "r50.pth"
    with torch.device("meta"):
        source = torchvision.models.resnet50(weights=None)
    torch.save({k: torch.zeros(v.shape) for k, v in source.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match=r"r50.pth.*resnet_18.*shape mismatch"):
        build_backbone(_section(pretrained_backbone_path=str(path)))


def test_pretrained_backbone_without_matching_keys_is_a_checkpoint_error(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"other.pth.*resnet_18"):
        build_backbone(_section(pretrained_backbone_path=str(path)))
    with pytest.raises(CheckpointError, match=r"not a file"):
        build_backbone(_section(pretrained_backbone_path=str(tmp_path / "absent.pth")))


def _random_frozen_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    for module in net.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_()
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    net.fc = torch.nn.Identity()
    return net


def test_folded_batch_norm_equals_unfolded_forward_and_backward() -> None:
    import copy

    plain = _random_frozen_resnet18()
    folded = fold_frozen_batch_norms(copy.deepcopy(plain))
    assert list(folded.state_dict()) == list(plain.state_dict())
    assert isinstance(folded.conv1, BatchNormConv2d) and isinstance(
        folded.layer2[0].downsample[0], BatchNormConv2d
    )
    images = torch.randn(2, 3, 64, 64)
    expected, actual = plain(images), folded(images)
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    expected.square().mean().backward()
    actual.square().mean().backward()
    for (name, a), (_, b) in zip(folded.named_parameters(), plain.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-3 * b.grad.abs().max().item()), name
    # loading new statistics reaches the folded convolution
    folded.load_state_dict(plain.state_dict() | {"bn1.running_var": plain.bn1.running_var * 4})
    assert not torch.allclose(folded(images), actual)


def test_channels_last_backbone_gives_the_same_features() -> None:
    backbone = build_backbone(_section(return_interm_indices=[1, 2, 3]))
    assert backbone.channels_last
    images = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        fast = backbone(images, mask)
        backbone.channels_last = False
        plain = backbone(images, mask)
    for (a, _), (b, _) in zip(fast, plain):
        assert a.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(a, b, atol=1e-4)


def test_backbone_trained_from_scratch_has_live_batch_norm_with_frozen_layout() -> None:
    from ddetr.model.backbone import LiveBatchNorm2d
    from ddetr.model.detector import DeformableDETR
    from ddetr.spec.sections import ModelSection

    common = dict(
        backbone="resnet_18",
        hidden_dim=32,
        nheads=2,
        enc_layers=1,
        dec_layers=1,
        dim_feedforward=64,
        num_queries=10,
        num_select=10,
        num_feature_levels=1,
        return_interm_indices=[3],
    )
    torch.manual_seed(0)
    live = DeformableDETR.from_config(ModelSection(**common, freeze_backbone_bn=False), 3)
    assert any(isinstance(m, LiveBatchNorm2d) for m in live.backbone.modules())
    assert all(p.requires_grad for p in live.backbone.parameters())  # stem and layer1 train too
    live.train()
    live(torch.randn(2, 3, 64, 64))  # running statistics move
    assert not torch.equal(live.state_dict()["backbone.body.bn1.running_mean"], torch.zeros(64))

    frozen = DeformableDETR.from_config(ModelSection(**common), 3)
    assert frozen.state_dict().keys() == live.state_dict().keys()
    frozen.load_state_dict(live.state_dict(), strict=True)
    live.eval()
    frozen.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(live(x).pred_logits, frozen(x).pred_logits, atol=1e-4, rtol=1e-4)
