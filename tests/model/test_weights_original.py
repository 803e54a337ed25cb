"""Import of the original Deformable DETR release checkpoints (layouts in tests/assets/original_layouts)."""

from __future__ import annotations

import argparse
import csv
import logging
import re
from pathlib import Path

import pytest
import torch

from asset_paths import ORIGINAL_LAYOUTS
from ddetr.artefacts.checkpoint import load_checkpoint
from ddetr.errors import CheckpointError
from ddetr.model.detector import DeformableDETR
from ddetr.model.weights import (
    import_original,
    interm_indices_for_levels,
    original_layout,
)
from ddetr.spec.sections import ModelSection
from ddetr.tasks.import_weights import run as import_weights

# variant -> the original code's command-line flags
VARIANTS = {
    "multiscale": {"num_feature_levels": 4, "with_box_refine": False, "two_stage": False},
    "refine": {"num_feature_levels": 4, "with_box_refine": True, "two_stage": False},
    "refine_two_stage": {"num_feature_levels": 4, "with_box_refine": True, "two_stage": True},
    "single_scale": {"num_feature_levels": 1, "with_box_refine": False, "two_stage": False},
}
ALIAS = re.compile(r"^transformer\.decoder\.((?:class|bbox)_embed\..*)$")
SHARED_HEAD = re.compile(r"^(class_embed|bbox_embed)\.\d+\.(.*)$")


def original_args(**overrides: object) -> argparse.Namespace:
    """An ``args`` Namespace with the original main.py's flags and defaults."""
    args = dict(
        lr=2e-4,
        lr_backbone_names=["backbone.0"],
        lr_backbone=2e-5,
        lr_linear_proj_names=["reference_points", "sampling_offsets"],
        lr_linear_proj_mult=0.1,
        batch_size=2,
        weight_decay=1e-4,
        epochs=50,
        lr_drop=40,
        lr_drop_epochs=None,
        clip_max_norm=0.1,
        sgd=False,
        with_box_refine=False,
        two_stage=False,
        frozen_weights=None,
        backbone="resnet50",
        dilation=False,
        position_embedding="sine",
        position_embedding_scale=6.283185307179586,
        num_feature_levels=4,
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=1024,
        hidden_dim=256,
        dropout=0.1,
        nheads=8,
        num_queries=300,
        dec_n_points=4,
        enc_n_points=4,
        masks=False,
        aux_loss=True,
        set_cost_class=2,
        set_cost_bbox=5,
        set_cost_giou=2,
        mask_loss_coef=1,
        dice_loss_coef=1,
        cls_loss_coef=2,
        bbox_loss_coef=5,
        giou_loss_coef=2,
        focal_alpha=0.25,
        dataset_file="coco",
        coco_path="./data/coco",
        coco_panoptic_path=None,
        remove_difficult=False,
        output_dir="exps/r50_deformable_detr",
        device="cuda",
        seed=42,
        resume="",
        start_epoch=0,
        eval=False,
        num_workers=2,
        cache_mode=False,
        distributed=True,
        rank=0,
        world_size=8,
        gpu=0,
        dist_url="env://",
        dist_backend="nccl",
    )
    args.update(overrides)
    return argparse.Namespace(**args)


def read_table(variant: str) -> dict[str, tuple[int, ...]]:
    with open(ORIGINAL_LAYOUTS / f"original_{variant}_keys.tsv", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {row["key"]: tuple(int(n) for n in re.findall(r"\d+", row["shape"])) for row in rows}


def random_state_dict(layout: dict[str, tuple[int, ...]], with_box_refine: bool) -> dict[str, torch.Tensor]:
    """Random tensors with the layout's shapes, sharing storage as the original modules do."""
    generator = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in layout.items():
        alias = ALIAS.match(key)
        shared = SHARED_HEAD.match(key)
        if alias and alias.group(1) in layout:
            continue  # filled below from the head it aliases
        if shared and not with_box_refine and f"{shared.group(1)}.0.{shared.group(2)}" in sd:
            sd[key] = sd[f"{shared.group(1)}.0.{shared.group(2)}"]  # one head repeated for every layer
            continue
        sd[key] = torch.randn(shape, generator=generator)
    for key in layout:
        alias = ALIAS.match(key)
        if alias and alias.group(1) in layout:
            sd[key] = sd[alias.group(1)]
    return sd


def write_release(path: Path, sd: dict[str, torch.Tensor], args: argparse.Namespace | None) -> Path:
    """A file shaped like the published ones: model, optimizer, lr_scheduler, epoch, args."""
    payload: dict[str, object] = {"model": sd, "epoch": 49}
    payload["optimizer"] = {
        "state": {},
        "param_groups": [{"lr": 2e-5, "weight_decay": 1e-4, "params": [0, 1]}],
    }
    payload["lr_scheduler"] = {"step_size": 40, "gamma": 0.1, "base_lrs": [2e-4], "last_epoch": 50}
    if args is not None:
        payload["args"] = args
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module", params=list(VARIANTS))
def release(request, tmp_path_factory):
    """(variant name, file, original state dict, args) for each of the four published layouts."""
    variant = request.param
    layout = read_table(variant)
    flags = VARIANTS[variant]
    sd = random_state_dict(layout, flags["with_box_refine"])
    args = original_args(**flags)
    path = write_release(tmp_path_factory.mktemp(variant) / f"r50_{variant}.pth", sd, args)
    return variant, path, sd, args


def small_args(**overrides: object) -> argparse.Namespace:
    small = dict(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64)
    small.update(overrides)
    return original_args(**small)


def small_release(
    tmp_path: Path, **overrides: object
) -> tuple[Path, dict[str, torch.Tensor], argparse.Namespace]:
    args = small_args(**overrides)
    model = ModelSection(
        backbone="resnet_" + args.backbone.removeprefix("resnet"),
        hidden_dim=args.hidden_dim,
        nheads=args.nheads,
        enc_layers=args.enc_layers,
        dec_layers=args.dec_layers,
        dim_feedforward=args.dim_feedforward,
        num_queries=args.num_queries,
        enc_n_points=args.enc_n_points,
        dec_n_points=args.dec_n_points,
        num_feature_levels=args.num_feature_levels,
        return_interm_indices=interm_indices_for_levels(args.num_feature_levels),
        with_box_refine=args.with_box_refine,
        two_stage=args.two_stage,
    )
    sd = random_state_dict(original_layout(model, 5), args.with_box_refine)
    return write_release(tmp_path / "small.pth", sd, args), sd, args


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_layout_reproduces_reference_table(variant):
    flags = VARIANTS[variant]
    model = ModelSection(
        **flags, return_interm_indices=interm_indices_for_levels(flags["num_feature_levels"])
    )
    assert original_layout(model, 91) == read_table(variant)


def test_interm_indices_follow_the_original_levels():
    assert interm_indices_for_levels(1) == [3]
    assert interm_indices_for_levels(3) == [1, 2, 3]
    assert interm_indices_for_levels(4) == [1, 2, 3, 4]
    assert interm_indices_for_levels(5) == [1, 2, 3, 4, 5]
    with pytest.raises(CheckpointError, match="num_feature_levels=2"):
        interm_indices_for_levels(2)


def test_import_maps_every_tensor_and_reads_args(release):
    variant, path, sd, args = release
    ours, model, num_classes = import_original(path)
    assert num_classes == 91
    assert len(ours) == len(sd)
    for key, tensor in sd.items():
        our_key = key.replace("backbone.0.body.", "backbone.body.", 1)
        assert our_key in ours, key
        assert torch.equal(ours[our_key], tensor), key
    assert not any(k.startswith("backbone.0.") for k in ours)
    flags = VARIANTS[variant]
    assert model.backbone == "resnet_50"
    assert model.num_feature_levels == flags["num_feature_levels"]
    assert model.with_box_refine is flags["with_box_refine"]
    assert model.two_stage is flags["two_stage"]
    assert model.return_interm_indices == ([3] if flags["num_feature_levels"] == 1 else [1, 2, 3, 4])
    assert (model.hidden_dim, model.nheads, model.enc_layers, model.dec_layers) == (256, 8, 6, 6)
    assert (model.dim_feedforward, model.num_queries, model.enc_n_points, model.dec_n_points) == (
        1024,
        300,
        4,
        4,
    )
    assert model.dropout_ratio == pytest.approx(args.dropout)
    assert model.dilation is False


def test_imported_weights_load_strictly_into_the_model(release):
    variant, path, sd, _ = release
    ours, model_section, num_classes = import_original(path)
    model = DeformableDETR.from_config(model_section, num_classes)
    result = model.load_state_dict(ours, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.state_dict()
    for key, tensor in sd.items():
        assert torch.equal(loaded[key.replace("backbone.0.body.", "backbone.body.", 1)], tensor), (
            variant,
            key,
        )


def test_import_weights_writes_a_self_describing_checkpoint(tmp_path):
    path, sd, _ = small_release(tmp_path, with_box_refine=True, two_stage=True, num_queries=20)
    result = import_weights("original", path, tmp_path / "out" / "imported.pth")
    out = result.output
    assert (
        out == tmp_path / "out" / "imported.pth" and result.num_classes == 5 and result.source == "original"
    )
    assert result.tensors == len(load_checkpoint(out).state_dict) and result.parameters > 0
    info = load_checkpoint(out)
    assert info.card.num_classes == 5
    card_model = info.card.model
    assert card_model.two_stage and card_model.with_box_refine and card_model.num_queries == 20
    assert card_model.num_select == 20 and info.card.num_select == 20
    assert info.raw["imported_from"] == {"source": "original", "path": str(path)}
    for key, tensor in sd.items():
        assert torch.equal(info.state_dict[key.replace("backbone.0.body.", "backbone.body.", 1)], tensor), key


def test_dilation_and_dropout_come_from_args(tmp_path):
    path, _, _ = small_release(tmp_path, backbone="resnet50", hidden_dim=64, dilation=True, dropout=0.0)
    _, model, _ = import_original(path)
    assert model.backbone == "resnet_50" and model.dilation is True and model.dropout_ratio == 0.0


def test_without_args_architecture_is_inferred_and_assumptions_logged(tmp_path, caplog):
    _, sd, _ = small_release(tmp_path, num_queries=30, with_box_refine=True, enc_n_points=2, nheads=8)
    bare = write_release(tmp_path / "bare.pth", sd, None)
    with caplog.at_level(logging.WARNING, logger="ddetr.model.weights"):
        ours, model, num_classes = import_original(bare)
    assert num_classes == 5 and len(ours) == len(sd)
    assert (model.backbone, model.hidden_dim, model.enc_layers, model.dec_layers) == ("resnet_18", 32, 1, 2)
    assert (model.num_queries, model.enc_n_points, model.dec_n_points) == (30, 2, 4)
    assert model.with_box_refine and not model.two_stage
    assert "nheads=8 (assumed)" in caplog.text and "dilation=False (assumed)" in caplog.text


class _Payload:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_disallowed_pickle_global_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "args": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused: .*'(builtins|io)\.open'"):
        import_original(path)
    assert not marker.exists()


def _refused_and_nothing_written(
    path: Path, sd: dict[str, torch.Tensor], args: argparse.Namespace, match: str
) -> None:
    """Importing the release written from ``sd`` and ``args`` fails with ``match`` and writes no output."""
    write_release(path, sd, args)
    out = path.parent / "out.pth"
    with pytest.raises(CheckpointError, match=match):
        import_weights("original", path, out)
    assert not out.exists()


def test_unknown_keys_are_listed_and_nothing_written(tmp_path):
    path, sd, args = small_release(tmp_path)
    sd = dict(sd, **{"backbone.1.extra.weight": torch.zeros(3), "transformer.foo": torch.zeros(1)})
    _refused_and_nothing_written(
        path, sd, args, r"2 unknown keys: backbone\.1\.extra\.weight, transformer\.foo"
    )
    assert list(tmp_path.iterdir()) == [path]


def test_missing_keys_are_listed_and_nothing_written(tmp_path):
    path, sd, args = small_release(tmp_path)
    del sd["transformer.level_embed"]
    del sd["input_proj.1.1.bias"]
    _refused_and_nothing_written(
        path, sd, args, r"2 missing keys: transformer\.level_embed, input_proj\.1\.1\.bias"
    )


def test_aliases_with_different_values_are_refused(tmp_path):
    path, sd, args = small_release(tmp_path, with_box_refine=True)
    sd["transformer.decoder.bbox_embed.1.layers.2.bias"] = sd["bbox_embed.1.layers.2.bias"] + 1
    _refused_and_nothing_written(
        path, sd, args, r"shares hold different values.*bbox_embed\.1\.layers\.2\.bias"
    )


def test_args_disagreeing_with_tensors_names_the_shapes(tmp_path):
    path, sd, _ = small_release(tmp_path, num_queries=40)
    write_release(path, sd, small_args(num_queries=50))
    with pytest.raises(CheckpointError, match=r"query_embed\.weight: file \[40, 64\] vs \[50, 64\]"):
        import_original(path)


def test_unsupported_args_are_errors(tmp_path):
    path, sd, _ = small_release(tmp_path)
    write_release(path, sd, small_args(backbone="swin_t"))
    with pytest.raises(CheckpointError, match=r"args\.backbone='swin_t'"):
        import_original(path)
    write_release(path, sd, small_args(masks=True))
    with pytest.raises(CheckpointError, match="segmentation"):
        import_original(path)


def test_not_a_checkpoint_is_an_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"junk\.pth"):
        import_original(junk)
    with pytest.raises(CheckpointError, match="not found"):
        import_original(tmp_path / "absent.pth")
