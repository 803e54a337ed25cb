"""DeepStream labels and nvinfer config text."""

from __future__ import annotations

from ddetr.deploy.nvdsinfer import labels_text, nvinfer_config_text


def test_labels_cover_every_logit_index() -> None:
    assert labels_text(["", "RBC"], 4).splitlines() == ["class_0", "RBC", "class_2", "class_3"]


def test_config_normalisation_matches_mean_std() -> None:
    text = nvinfer_config_text(
        "m.onnx",
        input_size=(960, 544),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        num_classes=4,
        batch_size=-1,
    )
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    scale = float(props["net-scale-factor"])
    offsets = [float(v) for v in props["offsets"].split(";")]
    # nvinfer: scale * (pixel - offset) must equal (pixel / 255 - mean) / std
    for pixel in (0.0, 100.0, 255.0):
        assert abs(scale * (pixel - offsets[0]) - (pixel / 255 - 0.5) / 0.25) < 1e-4
    assert props["infer-dims"] == "3;544;960" and props["batch-size"] == "1"
