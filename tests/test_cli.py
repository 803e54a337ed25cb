"""The ddetr command line: exit codes and one-line errors (run as a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli_helpers import one_error_line, run_ddetr
from ddetr import __version__
from ddetr.cli import main


def test_missing_spec_file(tmp_path):
    line = one_error_line(run_ddetr("train", "-e", str(tmp_path / "nope.yaml")))
    assert "nope.yaml" in line and "not found" in line


def test_unknown_key_suggests_the_closest_name(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("model:\n  num_querys: 100\n")
    line = one_error_line(run_ddetr("train", "-e", str(spec)))
    assert "num_querys" in line and "did you mean 'num_queries'" in line


def test_wrong_type():
    line = one_error_line(run_ddetr("evaluate", "train.num_epochs=ten"))
    assert "train.num_epochs" in line and "expected an integer" in line and "'ten'" in line


def test_out_of_range_with_overrides_before_and_after_the_spec(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  num_epochs: 2\n")
    line = one_error_line(
        run_ddetr("train", "dataset.batch_size=2", "-e", str(spec), "model.num_feature_levels=9")
    )
    assert "model.num_feature_levels" in line and "9" in line and "between 1 and 5" in line


def test_default_specs_with_results_dir_override_only(tmp_path):
    proc = run_ddetr("default_specs", f"results_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "train.yaml").is_file() and (tmp_path / "automl.yaml").is_file()


def test_python_dash_m_and_version():
    proc = subprocess.run(
        [sys.executable, "-m", "ddetr", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"ddetr {__version__}"


def test_unknown_action_is_a_one_line_error():
    assert "invalid choice" in one_error_line(run_ddetr("fly"))


def test_argument_that_is_not_an_override(tmp_path):
    assert "'--nonsense' is not key=value" in one_error_line(run_ddetr("train", "--nonsense"))


# In-process checks of the dispatch (cheap, no subprocess).


def test_missing_task_module_is_reported(monkeypatch, capsys, tmp_path):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "ddetr.tasks.quantize":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert main(["quantize", f"results_dir={tmp_path}"]) == 2
    assert "error: action quantize is not available yet" in capsys.readouterr().err


def test_task_receives_the_validated_spec_and_interrupts_exit_130(monkeypatch, tmp_path):
    import types

    seen = {}

    def run(spec):
        seen["spec"] = spec
        return {"ok": 1}

    monkeypatch.setitem(sys.modules, "ddetr.tasks.export", types.SimpleNamespace(run=run))
    assert main(["export", "-r", str(tmp_path), "-k", "secret", "export.opset_version=13"]) == 0
    spec = seen["spec"]
    assert (
        spec.results_dir == str(tmp_path)
        and spec.encryption_key == "secret"
        and spec.export.opset_version == 13
    )

    # the key from the environment when the spec has none; a spec or -k key wins over it
    monkeypatch.setenv("DDETR_ENCRYPTION_KEY", "from-env")
    assert main(["export", "-r", str(tmp_path)]) == 0
    assert seen["spec"].encryption_key == "from-env"
    assert main(["export", "-r", str(tmp_path), "-k", "secret"]) == 0
    assert seen["spec"].encryption_key == "secret"
    monkeypatch.delenv("DDETR_ENCRYPTION_KEY")

    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "ddetr.tasks.export", types.SimpleNamespace(run=interrupted))
    assert main(["export"]) == 130


def test_import_weights_errors_exit_2(tmp_path, capsys):
    # a real import of a missing file fails with one line and exit code 2, and writes nothing
    out = tmp_path / "out.pth"
    assert main(["import_weights", "--source", "original", str(tmp_path / "missing.pth"), str(out)]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert not out.exists()
    assert main(["import_weights", "--source", "tf", "in.pth", str(out)]) == 2


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help_exits_zero(argv, capsys):
    assert main(argv) == 0
    assert "usage" in capsys.readouterr().out


def _broken_export(monkeypatch) -> None:
    import types

    def run(spec):
        raise RuntimeError("unexpected\nstate in a task")

    monkeypatch.setitem(sys.modules, "ddetr.tasks.export", types.SimpleNamespace(run=run))


def test_unexpected_exception_is_one_line_exit_1(monkeypatch, capsys, tmp_path):
    _broken_export(monkeypatch)
    assert main(["export", "-r", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines == ["error: RuntimeError: unexpected state in a task (run with -v for the traceback)"]


def test_unexpected_exception_with_verbose_shows_the_traceback(monkeypatch, capsys, tmp_path):
    _broken_export(monkeypatch)
    assert main(["export", "-r", str(tmp_path), "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise RuntimeError("unexpected' in err
    assert err.rstrip().splitlines()[-1] == "error: RuntimeError: unexpected state in a task"
