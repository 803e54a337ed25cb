"""``ddetr import_weights`` end to end, in a subprocess: original release files and Hugging Face folders."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from ddetr.artefacts.checkpoint import load_checkpoint
from ddetr.model.detector import build_model_from_checkpoint
from ddetr.model.weights import interm_indices_for_levels, original_layout
from ddetr.spec.sections import ModelSection

PYTHON = sys.executable


def small_release(tmp_path: Path, **flags: object) -> tuple[Path, dict[str, torch.Tensor], dict[str, object]]:
    """A tiny original-layout release file (ResNet-18, d=32) with its ``args`` Namespace."""
    args = dict(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64)
    args.update(num_queries=300, num_feature_levels=4, with_box_refine=False, two_stage=False, dropout=0.1)
    args.update(enc_n_points=4, dec_n_points=4, dilation=False)
    args.update(flags)
    section = ModelSection(
        backbone="resnet_18",
        return_interm_indices=interm_indices_for_levels(4),
        **{k: v for k, v in args.items() if k not in ("backbone", "dropout")},
    )
    generator = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=generator) for k, shape in original_layout(section, 5).items()}
    if not section.with_box_refine:  # one head object repeated for every decoder layer, as in the original
        sd |= {
            k: sd[k.split(".", 2)[0] + ".0." + k.split(".", 2)[2]]
            for k in sd
            if k.startswith(("class_embed", "bbox_embed"))
        }
    sd |= {
        k: sd[k.removeprefix("transformer.decoder.")]
        for k in sd
        if k.startswith("transformer.decoder.") and "_embed." in k
    }
    return write_release(tmp_path / "release.pth", sd, args), sd, args


def write_release(path: Path, sd: dict[str, torch.Tensor], args: dict[str, object]) -> Path:
    torch.save({"model": sd, "args": argparse.Namespace(**args), "epoch": 49}, path)
    return path


def run_import(source: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``ddetr import_weights --source SOURCE ARGS`` in a subprocess."""
    return run_cli("--source", source, *args)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "ddetr", "import_weights", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_original_release_converts_with_one_summary_line(tmp_path):
    path, sd, _ = small_release(tmp_path, with_box_refine=True, num_queries=25)
    out = tmp_path / "ddetr.pth"
    result = run_import("original", path, out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert f"{out}: {len(sd)} tensors" in lines[0]
    assert "resnet_18, 4 levels, box refine, 25 queries, 1+2 layers, d=32, 2 heads, 5 classes" in lines[0]
    model, info = build_model_from_checkpoint(out)
    assert info.card.model.num_queries == 25 and info.card.num_classes == 5
    for key, tensor in sd.items():
        assert torch.equal(
            model.state_dict()[key.replace("backbone.0.body.", "backbone.body.", 1)], tensor
        ), key


def test_error_is_one_line_without_traceback_and_no_output(tmp_path):
    path, sd, args = small_release(tmp_path)
    sd["transformer.mystery.weight"] = torch.zeros(2)
    write_release(path, sd, args)
    out = tmp_path / "ddetr.pth"
    result = run_import("original", path, out)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error:") and "transformer.mystery.weight" in result.stderr
    assert not out.exists()


def test_cli_action_converts_an_original_release(tmp_path):
    path, _, _ = small_release(tmp_path, num_queries=15)
    out = tmp_path / "cli.pth"
    result = run_cli("--source", "original", path, out)
    assert result.returncode == 0, result.stderr
    assert "15 queries" in result.stdout
    assert load_checkpoint(out).card.model.num_queries == 15


def hf_model(with_box_refine: bool):
    """A tiny random-weight HF DeformableDetrForObjectDetection with named classes."""
    config = transformers.DeformableDetrConfig(
        use_timm_backbone=True,
        backbone="resnet18",
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=12,
        with_box_refine=with_box_refine,
        id2label={0: "N/A", 1: "person", 2: "bicycle"},
        label2id={"N/A": 0, "person": 1, "bicycle": 2},
    )
    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def check_hf_import(folder: Path, reference, out: Path, summary: str) -> None:
    result = run_import("hf", folder, out)
    assert result.returncode == 0, result.stderr
    assert summary in result.stdout
    model, info = build_model_from_checkpoint(out)
    assert info.card.class_names == ("N/A", "person", "bicycle")
    assert info.raw["imported_from"] == {"source": "hf", "path": str(folder)}
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = reference(pixel_values=images)
        actual = model(images)
    assert (actual.pred_logits - expected.logits).abs().max().item() <= 1e-4
    assert (actual.pred_boxes - expected.pred_boxes).abs().max().item() <= 1e-4


def test_save_pretrained_folder_converts_with_class_names(tmp_path):
    folder = tmp_path / "hf"
    hf_model(with_box_refine=False).save_pretrained(folder)
    # the folder means what transformers reads back from it (tied heads re-tied)
    reference = transformers.DeformableDetrForObjectDetection.from_pretrained(folder).eval()
    summary = "resnet_18, 4 levels, 12 queries, 1+2 layers, d=32, 2 heads, 3 classes"
    check_hf_import(folder, reference, tmp_path / "from_hf.pth", summary)


def test_folder_with_every_tensor_and_box_refinement_converts(tmp_path):
    """Hub-style folder: config.json + model.safetensors holding every tensor (no tied copies dropped)."""
    model = hf_model(with_box_refine=True)
    folder = tmp_path / "hub"
    model.config.save_pretrained(folder)
    save_file(
        {k: v.clone().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
    )
    summary = "resnet_18, 4 levels, box refine, 12 queries, 1+2 layers, d=32, 2 heads, 3 classes"
    check_hf_import(folder, model, tmp_path / "from_hub.pth", summary)


def test_hugging_face_folder_without_weights_is_an_error(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    result = run_import("hf", folder, tmp_path / "x.pth")
    assert result.returncode == 2 and "no model.safetensors" in result.stderr
    assert not (tmp_path / "x.pth").exists()
