"""What a training run shows besides status.json: TensorBoard pictures and PR curves, and W&B offline files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddetr.spec.load import load_spec
from ddetr.tasks import train

SECRET = "do-not-leak-this-key"


@pytest.fixture(scope="module")
def wandb_run(tiny_data: dict, tiny_overrides, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny training with W&B on, offline, every W&B folder inside the test's temporary folder."""
    pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wandb_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_DISABLED", raising=False)
        mp.delenv("WANDB_API_KEY", raising=False)
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(root / var.lower()))
        # were anything to try the network, it would fail here at once instead of leaving the machine
        mp.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
        mp.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        mp.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        args = [
            *tiny_overrides(tiny_data, root / "results"),
            "train.num_epochs=1",
            "wandb.enable=true",
            "wandb.project=ddetr-tests",
            "wandb.name=tiny",
            "wandb.tags=[tiny, ci]",
            f"encryption_key={SECRET}",
        ]
        result = train.run(load_spec(None, args))
    return {"train_dir": root / "results" / "train", "result": result}


def test_tensorboard_gets_sample_pictures_and_pr_curves(wandb_run: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((wandb_run["train_dir"] / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "val/samples" in tags["images"], tags
    image = acc.Images("val/samples")[-1]
    assert image.width >= 2 * 256 and image.height >= 4 * 256  # 4 images, ground truth | detections
    pr_tags = [t for t in tags["tensors"] if t.startswith("val/pr_iou50/")]
    assert sorted(pr_tags) == ["val/pr_iou50/circle", "val/pr_iou50/square", "val/pr_iou50/triangle"]
    # the PR plugin's layout: [tp, fp, tn, fn, precision, recall] x thresholds
    from tensorboard.util import tensor_util

    data = tensor_util.make_ndarray(acc.Tensors(pr_tags[0])[-1].tensor_proto)
    assert data.shape == (6, 101)
    tp, fp, fn = data[0], data[1], data[3]
    assert (tp + fn == tp[0] + fn[0]).all() and tp[0] + fn[0] > 0  # every threshold sees all boxes
    assert tp[0] + fp[0] > 0 and (tp[:-1] >= tp[1:]).all()  # detections at threshold 0; counts only fall


def _wandb_records(path: Path) -> list:
    """The records of a ``run-<id>.wandb`` file, decoded with W&B's own protobuf messages.

    The file is a ``:W&B`` header (7 bytes) then a LevelDB-style log: 32 KiB blocks of chunks, each with a
    7-byte header (CRC32C, length uint16 LE, type: 1 full, 2 first, 3 middle, 4 last).
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    block = 32768
    data = path.read_bytes()
    assert data[:4] == b":W&B" and data[4:6] == b"\xe1\xbe", data[:7]
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_files(wandb_run: dict) -> None:
    runs = list((wandb_run["train_dir"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds[0] == "header" and kinds[-1] == "exit", kinds
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "ddetr-tests" and run.display_name == "tiny" and list(run.tags) == ["tiny", "ci"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["model"]["hidden_dim"] == 32 and config["encryption_key"] == ""
    assert SECRET not in files[0].read_bytes().decode("latin-1")

    history: dict[str, list] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
    assert {"loss", "lr", "train_loss", "val_mAP", "val_mAP50", "val_loss"} <= set(history), sorted(history)
    assert all(0.0 <= v <= 1.0 for v in history["val_mAP"])
    assert history["val/samples/count"] == [4]
    pictures = list((runs[0] / "files" / "media" / "images" / "val").glob("samples_*.png"))
    assert len(pictures) == 4

    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "model" and "latest" in artifact.aliases
    assert [c.path for c in artifact.manifest.contents] == [wandb_run["result"].latest.name]


def test_wandb_missing_package_is_one_line(
    tiny_spec_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from ddetr.errors import UnavailableError

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(UnavailableError, match=r"pip install 'ddetr\[wandb\]'") as info:
        train.run(load_spec(None, [*tiny_spec_args, "wandb.enable=true"]))
    assert "\n" not in str(info.value)


def test_wandb_mode_follows_wandb_mode_then_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from ddetr.engine.wandb_run import choose_mode

    no_login = SimpleNamespace(api=SimpleNamespace(api_key=None))
    login = SimpleNamespace(api=SimpleNamespace(api_key="k" * 40))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert choose_mode(login)[0] == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert choose_mode(login)[0] == "offline"
    monkeypatch.delenv("WANDB_MODE")
    assert choose_mode(no_login) == ("offline", "no W&B API key")
    assert choose_mode(login)[0] == "online"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert choose_mode(no_login)[0] == "online"
