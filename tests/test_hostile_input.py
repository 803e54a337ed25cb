"""Broken and hostile input through the real command line (issue 13, item 8): each case is one ``error:`` line
with exit code 2 (or a warning and a skip, for one bad image among many), never a traceback or a hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

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
