"""report.html of train, evaluate and AutoML runs, opened in the system's headless Chromium (tests/browser.py).

Each report must load without a JavaScript error, a console error or a request leaving the machine, hold
every section its run has, and every chart must draw something (clipped data marks: lines, bars, cells).
Chromium missing fails these tests with the install command (`.ci/run` installs it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from asset_paths import BCCD
from browser import check_report, chromium_path
from ddetr.artefacts.card import ModelCard
from ddetr.artefacts.checkpoint import save_checkpoint
from ddetr.cli import main
from ddetr.engine.callbacks import read_metrics
from ddetr.model.detector import DeformableDETR
from ddetr.spec.load import dump_spec, load_spec
from ddetr.tasks import evaluate, train
from ddetr.tasks.report import MAX_EXAMPLES, write_report

TRAIN_CHARTS = ["losses", "lr", "val_map", "epoch_time"]
EVALUATE_CHARTS = ["per_class_ap", "pr_curves", "ap_by_size", "confusion"]


def test_chromium_is_installed() -> None:
    assert Path(chromium_path()).is_file()


def test_missing_chromium_fails_naming_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AssertionError, match="apt-get install -y chromium"):
        chromium_path()


@pytest.mark.slow  # train + evaluate + Chromium; the BCCD evaluation report stays in make test
def test_train_and_evaluate_reports(tiny_spec_args: list[str], tmp_path: Path) -> None:
    result = train.run(load_spec(None, tiny_spec_args))
    train_dir = result.train_dir
    assert result.report == train_dir / "report.html"
    records = read_metrics(train_dir / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert len(steps) == result.steps == 8  # 16 images, batch 4, 2 epochs
    assert {"loss_ce", "loss_bbox", "loss_giou", "lr", "lr_backbone"} <= set(steps[0])
    # lr_steps=[1]: the 4 steps of epoch 0 ran at the spec's lr, those of epoch 1 at a tenth of it
    assert [r["lr"] for r in steps] == pytest.approx([2e-4] * 4 + [2e-5] * 4)
    assert [r["epoch"] for r in records if "epoch_seconds" in r] == [0, 1]
    assert [r["epoch"] for r in records if "val_mAP" in r] == [0, 1]
    page = check_report(result.report, ["training", "dataset", "run", "spec"], TRAIN_CHARTS)
    text = result.report.read_text()
    assert ">best</td>" in text and "model_epoch_001_step_00008.pth" in text

    spec = load_spec(None, [*tiny_spec_args, f"evaluate.checkpoint={result.latest}", "encryption_key=sesame"])
    evaluated = evaluate.run(spec)
    assert evaluated.report is not None
    page = check_report(
        evaluated.report, ["evaluation", "examples", "dataset", "run", "spec"], EVALUATE_CHARTS
    )
    assert len(page.query["images"]) == 8  # every validation image: fewer than MAX_EXAMPLES
    assert "sesame" not in evaluated.report.read_text()

    # ddetr report rewrites both from the files alone
    results_dir = Path(spec.results_dir)
    evaluated.report.unlink()
    assert main(["report", f"results_dir={results_dir}"]) == 0
    assert (results_dir / "evaluate" / "report.html").is_file()


def test_report_of_an_empty_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", f"results_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: report: no train, evaluate or automl run") and "\n" not in err


def test_bccd_evaluation_report(tmp_path: Path) -> None:
    """A tiny random-init model on BCCD's 72 test images: a bounded page with the 12 worst images."""
    ann = BCCD / "annotations"
    args = [
        f"results_dir={tmp_path / 'results'}",
        "model.backbone=resnet_18",
        "model.hidden_dim=32",
        "model.nheads=2",
        "model.enc_layers=1",
        "model.dec_layers=1",
        "model.dim_feedforward=64",
        "model.num_queries=30",
        "model.num_select=30",
        "model.num_feature_levels=1",
        "model.return_interm_indices=[3]",
        "dataset.num_classes=4",
        "dataset.batch_size=8",
        "dataset.workers=0",
        f"dataset.test_data_sources={{image_dir: {BCCD / 'images'}, json_file: {ann / 'test.json'}}}",
        "dataset.augmentation.test_random_resize=128",
        "dataset.augmentation.random_resize_max_size=171",
        "evaluate.conf_threshold=0.05",
    ]
    spec = load_spec(None, args)
    torch.manual_seed(0)
    model = DeformableDETR.from_config(spec.model, 4)
    with torch.no_grad():  # scores around 0.5 instead of the 0.01 prior: boxes of every class are kept
        model.class_embed[-1].bias.zero_()
    ckpt = save_checkpoint(
        tmp_path / "model.pth",
        card=ModelCard.from_spec(spec, ["", "Platelets", "RBC", "WBC"]),
        state_dict=model.state_dict(),
        spec=spec.model_dump(),
    )
    result = evaluate.run(load_spec(None, [*args, f"evaluate.checkpoint={ckpt}"]))
    assert result.images == 72 and result.report is not None
    page = check_report(
        result.report,
        ["evaluation", "examples", "dataset", "run", "spec"],
        EVALUATE_CHARTS,
        full_page=True,
    )
    assert len(page.query["images"]) == MAX_EXAMPLES
    assert result.report.stat().st_size < 3_000_000
    (tmp_path / "bccd_report.png").write_bytes(page.screenshot)


def _study() -> optuna.Study:
    dist = {"train.optim.lr": FloatDistribution(1e-6, 1e-2, log=True)}
    study = optuna.create_study(direction="maximize")
    for i, (state, value) in enumerate(
        [
            (TrialState.COMPLETE, 0.2),
            (TrialState.PRUNED, None),
            (TrialState.COMPLETE, 0.5),
            (TrialState.COMPLETE, 0.4),
        ]
    ):
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"train.optim.lr": 10 ** -(i + 2)},
                distributions=dist,
                intermediate_values={1: 0.1} if state == TrialState.PRUNED else {},
            )
        )
    return study


def test_automl_report(tmp_path: Path) -> None:
    from ddetr.automl.report import write_reports

    spec = load_spec(None, [f"results_dir={tmp_path}", "dataset.num_classes=4"])
    automl_dir = tmp_path / "automl"
    automl_dir.mkdir()
    dump_spec(spec, automl_dir / "experiment.yaml")
    (automl_dir / "job.json").write_text(
        json.dumps({"job_id": "j-42", "parent_job_id": "p-7", "action": "automl"})
    )
    write_reports(_study(), spec, automl_dir)
    report = write_report(automl_dir, "automl")
    check_report(report, ["automl", "run", "spec"], ["history", "importance"])
    text = report.read_text()
    assert "j-42" in text and "p-7" in text and text.count("<tr") >= 5  # the 4 trials listed


@pytest.mark.slow
def test_demo_reports(demo_run: tuple[Path, str]) -> None:
    """The demo's train and evaluate reports; DDETR_REPORT_SCREENSHOT=FILE.png keeps the evaluate report's look."""
    root, _ = demo_run
    check_report(root / "train" / "report.html", ["training", "dataset", "run", "spec"], TRAIN_CHARTS)
    page = check_report(
        root / "evaluate" / "report.html",
        ["evaluation", "examples", "dataset", "run", "spec"],
        EVALUATE_CHARTS,
        height=1500,
    )
    assert len(page.query["images"]) == MAX_EXAMPLES
    if os.environ.get("DDETR_REPORT_SCREENSHOT"):
        Path(os.environ["DDETR_REPORT_SCREENSHOT"]).write_bytes(page.screenshot)
