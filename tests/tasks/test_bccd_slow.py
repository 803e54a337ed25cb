"""Slow end-to-end run on real data: BCCD packed as TAO ships datasets (images.tar.gz + annotations json)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from asset_paths import BCCD
from ddetr.cli import main
from ddetr.status import read_status


@pytest.mark.slow
def test_bccd_train_evaluate_infer_from_tarball(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(BCCD / "images", arcname="images")
    ann = BCCD / "annotations"
    results = tmp_path / "results"
    common = [
        f"results_dir={results}",
        "model.backbone=resnet_18",
        "model.hidden_dim=64",
        "model.nheads=4",
        "model.enc_layers=1",
        "model.dec_layers=2",
        "model.dim_feedforward=128",
        "model.num_queries=50",
        "model.num_select=50",
        "model.num_feature_levels=2",
        "model.return_interm_indices=[2,3]",
        "dataset.num_classes=4",
        "dataset.batch_size=4",
        "dataset.workers=1",
        f"dataset.train_data_sources=[{{image_dir: {archive}, json_file: {ann / 'train.json'}}}]",
        f"dataset.val_data_sources=[{{image_dir: {archive}, json_file: {ann / 'val.json'}}}]",
        f"dataset.test_data_sources={{image_dir: {archive}, json_file: {ann / 'val.json'}}}",
        "dataset.augmentation.scales=[224,256]",
        "dataset.augmentation.train_random_resize=[224]",
        "dataset.augmentation.train_random_crop_min=160",
        "dataset.augmentation.train_random_crop_max=224",
        "dataset.augmentation.random_resize_max_size=342",
        "dataset.augmentation.test_random_resize=256",
        "train.num_epochs=2",
        "train.optim.lr_steps=[1]",
    ]
    assert main(["train", *common]) == 0
    ckpt = results / "train" / "dd_model_latest.pth"
    assert ckpt.exists() and len(list((results / "train").glob("model_epoch_*.pth"))) == 2
    assert main(["evaluate", *common, f"evaluate.checkpoint={ckpt}"]) == 0

    # inference on the test split, itself packed as an archive
    test_ids = {img["file_name"] for img in json.loads((ann / "test.json").read_text())["images"]}
    test_archive = tmp_path / "test_images.tar.gz"
    with tarfile.open(test_archive, "w:gz") as tar:
        for name in sorted(test_ids):
            tar.add(BCCD / "images" / name, arcname=f"test/{name}")
    classmap = tmp_path / "classmap.txt"
    classmap.write_text("Platelets\nRBC\nWBC\n")
    infer = [f"dataset.infer_data_sources={{image_dir: [{test_archive}], classmap: {classmap}}}"]
    assert (
        main(["inference", *common, *infer, f"inference.checkpoint={ckpt}", "inference.conf_threshold=0.1"])
        == 0
    )

    for action in ("train", "evaluate", "inference"):
        events = read_status(results / action / "status.json")
        assert events[-1]["status"] == "SUCCESS", events[-1]
        assert (results / action / "experiment.yaml").is_file()
    vals = [e["kpi"] for e in read_status(results / "train" / "status.json") if "val_mAP" in e.get("kpi", {})]
    assert vals and all(0.0 <= k["val_mAP"] <= 1.0 and 0.0 <= k["val_mAP50"] <= 1.0 for k in vals)
    metrics = json.loads((results / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["test_mAP"] <= 1.0 and 0.0 <= metrics["test_mAP50"] <= 1.0
    assert set(metrics["per_class_AP"]) == {"Platelets", "RBC", "WBC"}
    labels = sorted((results / "inference" / "labels").glob("*.txt"))
    assert (
        len(labels) == len(test_ids) == len(list((results / "inference" / "images_annotated").glob("*.jpg")))
    )
    dets = json.loads((results / "inference" / "detections.json").read_text())
    assert isinstance(dets, list) and all(d["score"] >= 0.1 for d in dets)
    for line in (row for f in labels for row in f.read_text().splitlines()):
        assert line.split()[0] in {"Platelets", "RBC", "WBC"} and len(line.split()) == 16
