"""encryption_key end to end: a tiny training run writes encrypted checkpoints that evaluate, inference and
resume read back with the key and refuse without it; the CLI's -k reaches them; the key is written nowhere."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from ddetr.artefacts.checkpoint import load_checkpoint
from ddetr.cli import main
from ddetr.crypto import MAGIC
from ddetr.errors import CheckpointError
from ddetr.model.detector import DeformableDETR
from ddetr.spec.load import load_spec
from ddetr.tasks import evaluate, inference, train

KEY = "tlt_encode"


@pytest.fixture(scope="module")
def trained(
    tiny_data: dict, tiny_overrides, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[str], Path]:
    """A 1-epoch encrypted run of the tiny model: its overrides (key included) and its train folder."""
    args = [
        *tiny_overrides(tiny_data, tmp_path_factory.mktemp("encrypted")),
        "train.num_epochs=1",
        f"encryption_key={KEY}",
    ]
    result = train.run(load_spec(None, args))
    train_dir = result.latest.parent
    return args, train_dir


def test_training_checkpoints_are_encrypted(trained) -> None:
    _, train_dir = trained
    checkpoints = sorted(train_dir.glob("model_epoch_*.pth"))
    assert [p.name for p in checkpoints] == ["model_epoch_000_step_00004.pth"]
    latest = train_dir / "dd_model_latest.pth"
    assert latest.is_symlink() and latest.resolve() == checkpoints[0]
    assert checkpoints[0].read_bytes().startswith(MAGIC)
    with pytest.raises(pickle.UnpicklingError):  # not a readable torch file without decryption
        torch.load(checkpoints[0], weights_only=True)
    info = load_checkpoint(latest, encryption_key=KEY)
    assert info.card.num_classes == 4 and info.card.class_names == ("", "circle", "square", "triangle")
    assert info.raw["global_step"] == 4 and info.raw["optimizer_states"]
    # the key is kept out of the files the run writes (the checkpoint's spec, experiment.yaml, status.json)
    assert info.spec["encryption_key"] == ""
    assert yaml.safe_load((train_dir / "experiment.yaml").read_text())["encryption_key"] == ""
    for path in train_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert KEY.encode() not in path.read_bytes(), path
    assert not [p for p in train_dir.iterdir() if p.name.startswith(".")]  # no temporary file left

    with pytest.raises(CheckpointError, match="is encrypted; set encryption_key"):
        load_checkpoint(latest)
    with pytest.raises(CheckpointError, match="does not match"):
        DeformableDETR.from_checkpoint(latest, encryption_key="wrong")
    model = DeformableDETR.from_checkpoint(latest, encryption_key=KEY)
    assert model.card == info.card


def test_evaluate_and_inference_read_it_with_the_key_only(trained) -> None:
    args, train_dir = trained
    ckpt = train_dir / "dd_model_latest.pth"
    result = evaluate.run(load_spec(None, [*args, f"evaluate.checkpoint={ckpt}"]))
    assert 0.0 <= result.test_mAP <= 1.0 and result.images == 8
    done = inference.run(load_spec(None, [*args, f"inference.checkpoint={ckpt}"]))
    assert done.images == 8 and len(list(done.labels.glob("*.txt"))) == 8

    no_key = [a for a in args if not a.startswith("encryption_key=")]
    with pytest.raises(CheckpointError, match="is encrypted"):
        evaluate.run(load_spec(None, [*no_key, f"evaluate.checkpoint={ckpt}"]))
    with pytest.raises(CheckpointError, match="does not match"):
        inference.run(load_spec(None, [*no_key, "encryption_key=other", f"inference.checkpoint={ckpt}"]))


def test_cli_key_option_reaches_evaluate(trained, capsys: pytest.CaptureFixture) -> None:
    args, train_dir = trained
    no_key = [a for a in args if not a.startswith("encryption_key=")]
    ckpt = f"evaluate.checkpoint={train_dir / 'dd_model_latest.pth'}"
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert main(["evaluate", *no_key, ckpt]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "is encrypted" in errors[0] and "-k KEY" in errors[0]
        assert main(["evaluate", *no_key, ckpt, "-k", KEY]) == 0
        assert KEY not in capsys.readouterr().err  # the log never shows the key
    finally:  # main() configured the root logger; give it back to pytest
        root.handlers[:] = handlers
        root.setLevel(level)
    metrics = json.loads((Path(no_key[0].split("=", 1)[1]) / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["test_mAP"] <= 1.0


def test_resume_needs_the_key_and_continues_encrypted(trained) -> None:
    args, train_dir = trained
    no_key = [a for a in args if not a.startswith("encryption_key=")]
    # auto-resume from dd_model_latest.pth: without the key, a one-line error before any training
    with pytest.raises(CheckpointError, match="is encrypted"):
        train.run(load_spec(None, [*no_key, "train.num_epochs=2"]))
    train.run(load_spec(None, [*args, "train.num_epochs=2"]))
    names = sorted(p.name for p in train_dir.glob("model_epoch_*.pth"))
    assert names == ["model_epoch_000_step_00004.pth", "model_epoch_001_step_00008.pth"]
    resumed = load_checkpoint(train_dir / "dd_model_latest.pth", encryption_key=KEY).raw
    assert resumed["epoch"] == 1 and resumed["global_step"] == 8  # continued, not restarted
    assert (train_dir / names[-1]).read_bytes().startswith(MAGIC)
