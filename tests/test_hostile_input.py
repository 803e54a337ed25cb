"""Broken and hostile input through the real command line (issue 13, item 8): each case is one ``error:`` line
with exit code 2 (or a warning and a skip, for one bad image among many), never a traceback or a hang."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from cli_helpers import DDETR, one_error_line
from ddetr.cli import main

LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def run_ddetr(*args: str | Path) -> subprocess.CompletedProcess:
    """``ddetr ARGS`` as a real subprocess (ten minutes at most: training runs on a shared CPU)."""
    return subprocess.run([str(DDETR), *map(str, args)], capture_output=True, text=True, timeout=600)


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``ddetr ARGV`` in-process; the one ``error:`` line of a user error (exit 2), no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


# ------------------------------------------------------------------------------------------- the spec file


def test_spec_file_that_is_not_utf8(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"model:\n  backbone: '\xff\xfe'\n")
    line = error_line(capsys, ["train", "-e", str(spec), f"results_dir={tmp_path}"])
    assert "spec.yaml" in line and "not UTF-8" in line and "0xff" in line and "line 2" in line


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {b: *a}\n"], ids=["list", "mapping"])
def test_yaml_alias_that_refers_to_itself(tmp_path: Path, capsys, text: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    line = error_line(capsys, ["train", "-e", str(spec), f"results_dir={tmp_path}"])
    assert "spec.yaml" in line and "contains itself" in line


def test_yaml_alias_bomb_is_refused_within_a_second(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(LAUGHS)
    start = time.monotonic()
    line = error_line(capsys, ["train", "-e", str(spec), f"results_dir={tmp_path}"])
    assert time.monotonic() - start < 1.0
    assert "spec.yaml" in line and "more than 100000 values" in line and "alias" in line


def test_alias_bomb_in_an_override(tmp_path: Path, capsys) -> None:
    bomb = "[" + ",".join(["[" + ",".join(["x"] * 400) + "]"] * 400) + "]"
    line = error_line(capsys, ["train", f"dataset.eval_class_ids={bomb}", f"results_dir={tmp_path}"])
    assert "override dataset.eval_class_ids" in line and "more than 100000 values" in line


def test_interpolation_bomb_is_refused_within_a_second(tmp_path: Path, capsys) -> None:
    lines = ['v0: "' + "x" * 50 + '"']
    lines += [f'v{i}: "' + f"${{v{i - 1}}}" * 10 + '"' for i in range(1, 9)]
    spec = tmp_path / "spec.yaml"
    spec.write_text("\n".join(lines) + "\nresults_dir: ${v8}\n")
    start = time.monotonic()
    line = error_line(capsys, ["train", "-e", str(spec)])
    assert time.monotonic() - start < 1.0
    assert "${...} references expand to more than" in line


@pytest.mark.parametrize(
    ("override", "field", "shown"),
    [
        ("train.optim.lr=.inf", "train.optim.lr", "inf"),
        ("train.optim.lr=.nan", "train.optim.lr", "nan"),
        ("train.optim.lr='-inf'", "train.optim.lr", "'-inf'"),  # a string pydantic would read as a float
        ("model.cls_loss_coef=.inf", "model.cls_loss_coef", "inf"),  # no upper bound to catch it
        ("dataset.augmentation.input_mean=[0.5, .nan, 0.5]", "dataset.augmentation.input_mean[1]", "nan"),
        (
            "automl.range_override={train.optim.lr: [0, .inf]}",
            "automl.range_override.train.optim.lr[1]",
            "inf",
        ),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(
    tmp_path: Path, capsys, override: str, field: str, shown: str
) -> None:
    line = error_line(capsys, ["evaluate", override, f"results_dir={tmp_path}"])
    assert line.startswith(f"error: {field}: {shown} is not a finite number"), line


def test_non_finite_number_in_the_spec_file(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  optim:\n    lr: .inf\n")
    line = error_line(capsys, ["train", "-e", str(spec), f"results_dir={tmp_path}"])
    assert "train.optim.lr: inf is not a finite number" in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            f"model.hidden_dim={2**40}",
            f"model.hidden_dim: {2**40} is out of range, must be between 8 and 8192",
        ),
        ("model.dim_feedforward=100000000", "model.dim_feedforward: 100000000 is out of range"),
        ("model.num_queries=1000000000", "model.num_queries: 1000000000 is out of range"),
        (
            "dataset.augmentation.scales=[800, 100000]",
            "dataset.augmentation.scales[1]: 100000 is out of range, must be <= 16384",
        ),
        (
            "dataset.augmentation.test_random_resize=1000000",
            "dataset.augmentation.test_random_resize: 1000000",
        ),
    ],
)
def test_absurd_sizes_are_refused_by_their_bound(
    tmp_path: Path, capsys, override: str, expected: str
) -> None:
    line = error_line(capsys, ["train", override, f"results_dir={tmp_path}"])
    assert expected in line, line


@pytest.mark.parametrize("field", ["scales", "train_random_resize"])
def test_empty_resize_lists_are_refused_naming_the_field(tmp_path: Path, capsys, field: str) -> None:
    line = error_line(capsys, ["train", f"dataset.augmentation.{field}=[]", f"results_dir={tmp_path}"])
    assert f"dataset.augmentation.{field}: [] is too short, at least 1 item needed" in line


# ------------------------------------------------------------------------------------------------ training


def test_nan_loss_stops_with_what_to_lower(tiny_spec_args: list[str]) -> None:
    # a subprocess: Lightning's own log handler would outlive an in-process run's captured stderr
    args = [*tiny_spec_args, "train.optim.lr=1e30", "train.clip_grad_norm=0", "train.num_epochs=1"]
    line = one_error_line(run_ddetr("train", *args))
    assert "training diverged: the loss is nan" in line, line
    assert "lower train.optim.lr (now 1e+30)" in line and "train.clip_grad_norm > 0" in line
    assert "resume" not in line
    results = Path(next(a for a in args if a.startswith("results_dir="))[len("results_dir=") :])
    status = (results / "train" / "status.json").read_text()
    assert "training diverged" in status and "resume" not in status


def test_resume_checkpoint_of_another_architecture_names_the_fields(
    tiny_spec_args: list[str], tmp_path: Path
) -> None:
    from ddetr.spec.load import load_spec
    from ddetr.tasks import train

    first = train.run(load_spec(None, [*tiny_spec_args, "train.num_epochs=1"]))
    # another results_dir (this process holds the first one's lock), resuming the first run's checkpoint with
    # a wider model and more classes
    args = [
        *tiny_spec_args,
        f"results_dir={tmp_path / 'other'}",
        "model.hidden_dim=64",
        "dataset.num_classes=5",
    ]
    line = one_error_line(run_ddetr("train", *args, f"train.resume_training_checkpoint_path={first.latest}"))
    assert "is another architecture than the spec" in line and str(first.latest) in line, line
    assert "model.hidden_dim 32 vs 64" in line and "dataset.num_classes 4 vs 5" in line


# ------------------------------------------------------------------------------------------ files we read


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.fixture(scope="module")
def untrained(tiny_data: dict, tiny_overrides, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, Path]:
    """The tiny model's overrides and an (untrained) checkpoint of it, written without training."""
    from ddetr.artefacts.card import ModelCard
    from ddetr.artefacts.checkpoint import save_checkpoint
    from ddetr.model.detector import DeformableDETR
    from ddetr.spec.load import load_spec

    root = tmp_path_factory.mktemp("untrained")
    args = tiny_overrides(tiny_data, root / "results")
    spec = load_spec(None, args)
    model = DeformableDETR.from_config(spec.model, spec.dataset.num_classes)
    card = ModelCard.from_spec(spec, ["", "circle", "square", "triangle"])
    return args, save_checkpoint(root / "model.pth", card=card, state_dict=model.state_dict())


def test_image_bomb_in_inference_is_skipped_with_a_warning(untrained, tmp_path: Path, capsys) -> None:
    import shutil

    args, ckpt = untrained
    images = tmp_path / "images"
    images.mkdir()
    good = sorted(
        Path(
            next(a for a in args if a.startswith("dataset.val_data_sources"))
            .split("image_dir: ")[1]
            .split(",")[0]
        ).glob("*.jpg")
    )[:2]
    for p in good:
        shutil.copy(p, images / p.name)
    bomb_png(images / "bomb.png")
    results = tmp_path / "results"
    argv = [
        "inference",
        *args,
        f"inference.checkpoint={ckpt}",
        f"dataset.infer_data_sources={{image_dir: [{images}]}}",
        f"results_dir={results}",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "bomb.png" in err and "too large to decode" in err
    labels = sorted(p.name for p in (results / "inference" / "labels").iterdir())
    assert labels == sorted(f"{p.stem}.txt" for p in good)


def random_file(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """``size`` bytes of noise under ``path`` (no PyTorch, pickle or zip structure)."""
    import random

    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def test_random_file_as_pretrained_backbone(tiny_spec_args: list[str], tmp_path: Path, capsys) -> None:
    noise = random_file(tmp_path / "backbone.pth")
    line = error_line(capsys, ["train", *tiny_spec_args, f"model.pretrained_backbone_path={noise}"])
    assert "model.pretrained_backbone_path" in line and str(noise) in line
    assert "not a readable PyTorch checkpoint" in line
    assert "weights_only` set to `False`" not in line  # never torch's advice to load it unsafely


@pytest.mark.parametrize("size", [0, 4096], ids=["empty", "noise"])
def test_random_file_as_resume_checkpoint(tiny_spec_args: list[str], tmp_path: Path, size: int) -> None:
    # a subprocess: the refusal comes from inside Lightning's fit, whose log handler outlives captured stderr
    noise = random_file(tmp_path / "resume.pth", size)
    line = one_error_line(
        run_ddetr("train", *tiny_spec_args, f"train.resume_training_checkpoint_path={noise}")
    )
    assert str(noise) in line and "not a readable PyTorch checkpoint" in line
    assert "weights_only` set to `False`" not in line


def onnx_file(path: Path, meta: str | None, image: list, logits: list, boxes: list) -> Path:
    """An ONNX file with ddetr's input/output names and shapes, and ``meta`` as its ``ddetr`` metadata."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["inputs"], ["pred_logits"]),
            helper.make_node("Identity", ["inputs"], ["pred_boxes"]),
        ],
        "g",
        [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, image)],
        [
            helper.make_tensor_value_info("pred_logits", TensorProto.FLOAT, logits),
            helper.make_tensor_value_info("pred_boxes", TensorProto.FLOAT, boxes),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "ddetr", meta
    onnx.save(model, str(path))
    return path


CARD = '{"card_version": 2, "model": {"num_queries": 10}, "num_classes": 4'


@pytest.mark.parametrize(
    ("meta", "image", "logits", "expected"),
    [
        (None, [1, 3, 32, 32], [1, 10, 4], "not a ddetr ONNX model"),
        ("{", [1, 3, 32, 32], [1, 10, 4], "'ddetr' metadata is not JSON"),
        ("[1, 2]", [1, 3, 32, 32], [1, 10, 4], "'ddetr' metadata is not a JSON object"),
        ('{"card_version": 2}', [1, 3, 32, 32], [1, 10, 4], "has no 'model' entry"),
        (CARD + ', "input_size": "ab"}', [1, 3, 32, 32], [1, 10, 4], "invalid model card entry"),
        # metadata that is valid on its own but contradicts the graph
        (
            CARD + "}",
            [1, 3, 32, 32],
            [1, 10, 4],
            "input 'inputs' is fixed at width x height 32x32 but the metadata says no fixed size",
        ),
        (
            CARD + ', "input_size": [32, 32]}',
            [1, 3, 32, 32],
            [1, 10, 4, 1],
            "output 'pred_logits' is (1, 10, 4, 1), expected 3 dimensions",
        ),
        (
            CARD + ', "input_size": [32, 32]}',
            [1, 3, 32, 32],
            [1, 10, 7],
            "output 'pred_logits' ends in 7 but the metadata says num_classes 4",
        ),
        (
            CARD + ', "input_size": [32, 32]}',
            [1, 3, 32, 32],
            [1, 99, 4],
            "output 'pred_logits' has 99 queries but the metadata says num_queries 10",
        ),
    ],
)
def test_onnx_file_with_our_names_but_broken_metadata(
    tmp_path: Path, capsys, meta: str | None, image: list, logits: list, expected: str
) -> None:
    model = onnx_file(tmp_path / "model.onnx", meta, image, logits, [1, 10, 4])
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.jpg")
    line = error_line(
        capsys,
        [
            "inference",
            f"inference.checkpoint={model}",
            f"dataset.infer_data_sources={{image_dir: [{tmp_path / 'images'}]}}",
            f"results_dir={tmp_path / 'results'}",
        ],
    )
    assert str(model) in line and expected in line, line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("foo://bucket/train.json", "Protocol not known: foo"),  # an unknown protocol
        ("dbfs://x/train.json", "TypeError: DatabricksFileSystem"),  # a driver that needs arguments
        ("reference://x/train.json", "TypeError: ReferenceFileSystem"),
        ("ftp://127.0.0.1:1/train.json", "ConnectionRefusedError"),  # the driver connects while opening
        ("zip://train.json::file:///no/such/archive.zip", "FileNotFoundError"),  # a chained URL
    ],
)
def test_remote_urls_that_fsspec_refuses(tmp_path: Path, capsys, url: str, expected: str) -> None:
    sources = f"dataset.train_data_sources=[{{image_dir: {tmp_path}, json_file: '{url}'}}]"
    line = error_line(capsys, ["train", sources, f"results_dir={tmp_path / 'results'}"])
    assert f"Cannot open '{url}'" in line and expected in line, line
    assert "s3fs" not in line  # the s3 hint only for s3 URLs


def test_missing_optional_driver_is_named(tmp_path: Path, capsys) -> None:
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")  # pragma: no cover
    sources = f"dataset.train_data_sources=[{{image_dir: {tmp_path}, json_file: 'gs://bucket/train.json'}}]"
    line = error_line(capsys, ["train", sources, f"results_dir={tmp_path / 'results'}"])
    assert "Cannot open 'gs://bucket/train.json'" in line and "gcsfs" in line
