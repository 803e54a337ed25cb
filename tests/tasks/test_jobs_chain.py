"""A real tiny chain recorded in the job registry: train -> evaluate/export -> quantize -> gen_trt_engine planning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddetr.cli import main as cli_main
from ddetr.jobs.registry import JobError, Registry
from ddetr.spec.load import load_spec
from ddetr.tasks import gen_trt_engine, train
from ddetr.tasks.jobrecord import resolve_parent

SMALL_EXPORT = ["export.on_cpu=true", "export.input_width=64", "export.input_height=64"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: dict, tiny_overrides) -> dict:
    """One tiny training (2 epochs: checkpoints at epoch 0 step 4 and epoch 1 step 8) and its job id."""
    args = tiny_overrides(tiny_data, tmp_path_factory.mktemp("chain") / "results")
    result = train.run(load_spec(None, args, action="train"))
    job_file = json.loads((result.train_dir / "job.json").read_text())
    return {"args": args, "job": job_file["job_id"], "result": result, "data": tiny_data}


def _registry() -> Registry:
    return Registry()  # DDETR_JOBS_DB: the session's registry (tests/conftest.py)


def _job_of(folder: Path) -> str:
    return json.loads((folder / "job.json").read_text())["job_id"]


def test_train_records_its_checkpoints_with_kpis(trained: dict) -> None:
    job = _registry().get(trained["job"])
    assert (job.action, job.status, job.parent_id) == ("train", "success", "")
    ckpts = [a for a in job.artefacts if a.kind == "checkpoint"]
    assert [(a.epoch, a.step) for a in ckpts] == [(0, 4), (1, 8)]
    assert all("val_mAP" in a.kpis and len(a.sha256) == 64 and a.size > 0 for a in ckpts)
    assert "val_mAP" in job.kpis and job.kpis["steps"] == 8


@pytest.mark.parametrize(
    ("select", "name"),
    [
        ("latest", "model_epoch_001_step_00008.pth"),
        ("epoch=0", "model_epoch_000_step_00004.pth"),
        ("step=8", "model_epoch_001_step_00008.pth"),
    ],
)
def test_parent_select_fills_the_checkpoint(trained: dict, select: str, name: str) -> None:
    for action, field in (("evaluate", "checkpoint"), ("inference", "checkpoint"), ("export", "checkpoint")):
        spec = load_spec(
            None, [*trained["args"], f"parent_job_id={trained['job']}", f"parent_select={select}"]
        )
        resolved = resolve_parent(spec, action)
        assert Path(getattr(getattr(resolved, action), field)).name == name
        assert resolved.parent_job_id == trained["job"]


def test_best_is_the_highest_val_map(trained: dict) -> None:
    spec = load_spec(None, [*trained["args"], f"parent_job_id={trained['job'][:6]}"])  # a prefix will do
    assert Path(resolve_parent(spec, "evaluate").evaluate.checkpoint) == trained["result"].best.path


def test_explicit_path_wins_and_train_takes_parent_weights(trained: dict, tmp_path: Path) -> None:
    first = trained["result"].checkpoints[0].path
    spec = load_spec(
        None, [*trained["args"], f"parent_job_id={trained['job']}", f"evaluate.checkpoint={first}"]
    )
    assert resolve_parent(spec, "evaluate").evaluate.checkpoint == str(first)
    # fine-tuning in another folder starts from the parent's weights; the same folder resumes it
    other = load_spec(None, [*trained["args"], f"results_dir={tmp_path}", f"parent_job_id={trained['job']}"])
    resolved = resolve_parent(other, "train").train
    assert Path(resolved.pretrained_model_path).name.startswith("model_epoch_")
    assert not resolved.resume_training_checkpoint_path
    same = load_spec(None, [*trained["args"], f"parent_job_id={trained['job']}", "parent_select=epoch=0"])
    assert Path(resolve_parent(same, "train").train.resume_training_checkpoint_path) == first


def test_parent_errors_are_one_line(trained: dict, capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_spec(None, [*trained["args"], f"parent_job_id={trained['job']}"])
    with pytest.raises(
        JobError, match=f"parent job {trained['job']} .* has no ONNX file to use: it has checkpoint"
    ):
        resolve_parent(spec, "gen_trt_engine")
    job = trained["job"]
    missing = job[:-1] + ("1" if job.endswith("0") else "0")  # one character off: no such job
    code = cli_main(["evaluate", *trained["args"], "--parent", missing, "--select", "epoch=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("error: no job ") and f"closest: {trained['job']}" in err


def test_evaluate_with_parent_records_lineage(trained: dict, tmp_path: Path) -> None:
    args = [*trained["args"], f"results_dir={tmp_path}"]
    assert cli_main(["evaluate", *args, "--parent", trained["job"], "--select", "epoch=0"]) == 0
    job_file = json.loads((tmp_path / "evaluate" / "job.json").read_text())
    assert job_file["parent_job_id"] == trained["job"] and job_file["action"] == "evaluate"
    job = _registry().get(job_file["job_id"])
    assert job.status == "success" and job.parent_id == trained["job"]
    assert (
        Path(job.inputs["model"]).name == "model_epoch_000_step_00004.pth"
        and job.inputs["select"] == "epoch=0"
    )
    assert "test_mAP" in job.kpis and {a.kind for a in job.artefacts} == {"metrics", "detections"}


@pytest.mark.slow  # export, quantize and an engine build after the shared training
def test_export_quantize_engine_chain(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_data = trained["data"]["train"]
    args = [
        *trained["args"],
        f"results_dir={tmp_path}",
        *SMALL_EXPORT,
        "quantize.backend=onnxruntime",
        "quantize.mode=static_ptq",
        "quantize.backend_kwargs={num_calibration_images: 4}",
        f"dataset.quant_calibration_data_sources={{image_dir: {train_data['image_dir']}, "
        f"json_file: {train_data['json_file']}}}",
    ]
    # export the latest: the ONNX file is named after the checkpoint, not after the latest link
    assert cli_main(["export", *args, "--parent", trained["job"], "--select", "latest"]) == 0
    exported = _registry().get(_job_of(tmp_path / "export"))
    (onnx,) = [a for a in exported.artefacts if a.kind == "onnx"]
    assert Path(onnx.path).name == "model_epoch_001_step_00008.onnx" and (onnx.epoch, onnx.step) == (1, 8)
    assert exported.parent_id == trained["job"]

    assert cli_main(["quantize", *args, "--parent", exported.id]) == 0
    quantized = _registry().get(_job_of(tmp_path / "quantize"))
    assert quantized.parent_id == exported.id and quantized.inputs["model"] == onnx.path
    (qfile,) = [a for a in quantized.artefacts if a.kind == "quantized"]
    assert Path(qfile.path).name == "model_epoch_001_step_00008_int8.onnx" and qfile.step == 8
    assert "quantized_mAP" in quantized.kpis

    # gen_trt_engine: the quantize parent's ONNX file is planned (no TensorRT needed for the plan)
    spec = load_spec(None, [*args, f"parent_job_id={quantized.id}"], action="gen_trt_engine")
    resolved = resolve_parent(spec, "gen_trt_engine")
    assert resolved.gen_trt_engine.onnx_file == qfile.path
    settings, _card = gen_trt_engine.plan(resolved)
    assert Path(settings.engine_file).name == "model_epoch_001_step_00008_int8.engine"
    # and from the export parent; without TensorRT the build is a one-line error, recorded as a failure
    capsys.readouterr()
    code = cli_main(["gen_trt_engine", *args, "--parent", exported.id])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the log lines come before the error
    engine_job = _registry().get(_job_of(tmp_path / "gen_trt_engine"))
    assert engine_job.parent_id == exported.id and engine_job.inputs["model"] == onnx.path
    if code == 0:  # pragma: no cover - a machine with TensorRT and a GPU
        assert engine_job.status == "success"
    else:
        assert code == 2 and err.startswith("error: ") and "TensorRT" in err
        assert engine_job.status == "failure" and "TensorRT" in engine_job.reason

    # the lineage from the training run to its engine
    capsys.readouterr()
    assert cli_main(["jobs", "tree", engine_job.id]) == 0
    tree = capsys.readouterr().out
    assert tree.splitlines()[0].startswith(f"{trained['job']} train success")
    for job in (exported, quantized, engine_job):
        assert job.id in tree
    assert tree.rstrip().endswith("*") or " *" in tree


def test_changed_parent_checkpoint_is_refused(trained: dict, tmp_path: Path) -> None:
    """A parent's file whose bytes changed is named in one line (a copy of the chain's training, then edited)."""
    registry = _registry()
    source = trained["result"].checkpoints[0].path
    copy = tmp_path / source.name
    copy.write_bytes(source.read_bytes())
    from ddetr.jobs.registry import Artefact

    job = registry.start("train", results_dir=str(tmp_path))
    registry.add_artefacts(job, [Artefact(path=str(copy), kind="checkpoint")])
    registry.finish(job, "success")
    with copy.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    spec = load_spec(None, [*trained["args"], f"parent_job_id={job}"])
    with pytest.raises(JobError, match=f"{copy} has changed since it was recorded"):
        resolve_parent(spec, "export")
