"""One AutoML trial: a normal ``ddetr train`` run in its own folder, watched through its status.json.

The trial's spec is the base spec with the trial's values, its own ``results_dir``
(``<results_dir>/automl/trial_<NNN>``), ``automl.max_epochs`` epochs and a validation after every epoch. The
training runs as a subprocess; every validation's metric read from ``trial_<NNN>/train/status.json`` is
reported to Optuna, and when the pruner says so the subprocess is terminated. The subprocess dies with the
search process (see :mod:`ddetr.automl.child`), so a killed search leaves no training behind.

With ``automl.metric`` test_mAP or test_mAP50 the pruner watches the validation counterpart (val_mAP,
val_mAP50) during training; a trial that trains to its end then runs ``ddetr evaluate`` on its checkpoint
(``dd_model_latest.pth``) with ``dataset.test_data_sources``, in ``trial_<NNN>/evaluate``, and that
evaluation's metric is the trial's value.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ddetr.automl.space import ConstraintViolation, SearchSpace, apply_values, violations
from ddetr.crypto import KEY_ENV
from ddetr.errors import SpecError
from ddetr.spec.load import dump_spec
from ddetr.spec.sections import Spec
from ddetr.status import read_status

logger = logging.getLogger(__name__)

__all__ = ["TIE_BREAK", "TrialRunner", "trial_dir_name"]

# Early in training every trial's mAP is often exactly 0, and equal values are never pruned. The value
# reported to the pruner therefore carries a tie-break from val_loss, smaller than any mAP difference COCOeval
# can produce; the trial's final value is the metric itself.
TIE_BREAK = 1e-6
TERMINATE_GRACE = 10.0  # seconds a terminated training gets before it is killed


def trial_dir_name(number: int) -> str:
    """``trial_007`` for trial number 7."""
    return f"trial_{number:03d}"


def default_train_command() -> list[str]:
    """``python -m ddetr train`` with this interpreter."""
    return [sys.executable, "-m", "ddetr", "train"]


def default_evaluate_command() -> list[str]:
    """``python -m ddetr evaluate`` with this interpreter."""
    return [sys.executable, "-m", "ddetr", "evaluate"]


def watched_metric(metric: str) -> str:
    """The metric read from a training's validations: ``test_mAP`` -> ``val_mAP``; ``val_*`` as it is."""
    return "val_" + metric[len("test_") :] if metric.startswith("test_") else metric


@dataclass
class _Watch:
    reported: set[int] = field(default_factory=set)
    last_value: float | None = None
    last_epoch: int = -1
    last_loss: float | None = None
    failure: str = ""


class TrialRunner:
    """Runs trials taken from the study.

    Args:
        base: The validated base spec.
        space: The search space.
        automl_dir: ``<results_dir>/automl``.
        train_command: The training command before ``-e SPEC`` (default ``python -m ddetr train``).
        evaluate_command: The evaluation command before ``-e SPEC`` for test_* metrics (default
            ``python -m ddetr evaluate``).
        poll_interval: Seconds between looks at a running trial's status.json.
        stop: Set to stop running trials (they are failed and queued again).
    """

    def __init__(
        self,
        base: Spec,
        space: SearchSpace,
        automl_dir: Path,
        *,
        train_command: Sequence[str] | None = None,
        evaluate_command: Sequence[str] | None = None,
        poll_interval: float = 1.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.base = base
        self.space = space
        self.automl_dir = automl_dir
        self.metric = base.automl.metric
        self.watched = watched_metric(self.metric)  # what the pruner sees epoch by epoch
        self.sign = 1.0 if base.automl.direction == "maximize" else -1.0
        self.train_command = list(train_command) if train_command else default_train_command()
        self.evaluate_command = list(evaluate_command) if evaluate_command else default_evaluate_command()
        self.poll_interval = poll_interval
        self.stop = stop or threading.Event()

    def trial_spec(self, values: dict[str, Any], trial_dir: Path) -> Spec:
        """The base spec with the trial's values, folder and budget.

        Raises:
            SpecError: the values break a field's range or a rule.
        """
        extra = {
            "results_dir": str(trial_dir),
            "train.results_dir": "",
            "train.num_epochs": self.base.automl.max_epochs,
            "train.validation_interval": 1,
            "train.resume_training_checkpoint_path": "",
            "train.is_dry_run": False,
            "automl_policy": "off",
            "automl.enabled": False,
        }
        return apply_values(self.base, values, extra)

    def run(self, study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        """Run one trial to its end and tell the study its state and value."""
        trial_dir = self.automl_dir / trial_dir_name(trial.number)
        trial.set_user_attr("dir", str(trial_dir))
        try:
            values = self.space.suggest(trial, self.base)
            spec = self.trial_spec(values, trial_dir)
            broken = violations(spec)
            if broken:
                raise ConstraintViolation("; ".join(broken))
        except (ConstraintViolation, SpecError) as exc:
            logger.warning("trial %d not started: %s", trial.number, exc)
            trial.set_user_attr("error", f"not started: {exc}")
            return study.tell(trial, state=TrialState.FAIL)
        trial_dir.mkdir(parents=True, exist_ok=True)
        # the key goes to the trial through its environment, never into spec.yaml
        spec_path = dump_spec(spec.model_copy(update={"encryption_key": ""}), trial_dir / "spec.yaml")
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        logger.info("trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in values.items()))
        return self._watch(study, trial, trial_dir, spec_path)

    def _launch(
        self,
        trial_dir: Path,
        spec_path: Path,
        command: Sequence[str] | None = None,
        extra: Sequence[str] = (),
        log_name: str = "train.log",
    ) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "ddetr.automl.child", str(os.getpid()), "--"]
        cmd += [*(command or self.train_command), "-e", str(spec_path), *extra]
        env = dict(os.environ)
        if self.base.encryption_key:
            env[KEY_ENV] = self.base.encryption_key
        with (trial_dir / log_name).open("ab") as log:
            return subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def _read(self, trial: optuna.Trial, status_path: Path, watch: _Watch) -> None:
        for event in read_status(status_path):
            kpi = event.get("kpi") or {}
            if event.get("status") == "FAILURE":
                watch.failure = str(event.get("message", ""))
            value = kpi.get(self.watched)
            if (
                event.get("status") != "RUNNING"
                or "epoch" not in event
                or not isinstance(value, (int, float))
            ):
                continue
            step = int(event["epoch"]) + 1  # epochs trained so far: the resource the pruner counts
            if step in watch.reported:
                continue
            watch.reported.add(step)
            watch.last_value, watch.last_epoch = float(value), step
            loss = kpi.get("val_loss")
            tie = 0.0
            watch.last_loss = None
            if isinstance(loss, (int, float)) and math.isfinite(loss) and loss >= 0:
                tie = TIE_BREAK * loss / (1.0 + loss)
                watch.last_loss = float(loss)
            trial.report(float(value) - self.sign * tie, step)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(TERMINATE_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _watch(
        self, study: optuna.Study, trial: optuna.Trial, trial_dir: Path, spec_path: Path
    ) -> optuna.trial.FrozenTrial:
        storage = study._storage
        status_path = trial_dir / "train" / "status.json"
        watch = _Watch()
        start = time.monotonic()
        proc = self._launch(trial_dir, spec_path)
        try:
            while True:
                storage.record_heartbeat(trial._trial_id)
                done = proc.poll() is not None
                self._read(trial, status_path, watch)
                if done:
                    break
                if self.stop.is_set():
                    raise KeyboardInterrupt
                if watch.reported and trial.should_prune():
                    self._terminate(proc)
                    trial.set_user_attr("epochs", watch.last_epoch)
                    trial.set_user_attr("last_metric", watch.last_value)
                    trial.set_user_attr("duration_s", round(time.monotonic() - start, 1))
                    logger.info("trial %d pruned after %d epochs", trial.number, watch.last_epoch)
                    return study.tell(trial, state=TrialState.PRUNED)
                time.sleep(self.poll_interval)
        except BaseException:
            self._terminate(proc)
            trial.set_user_attr("error", "interrupted")
            frozen = study.tell(trial, state=TrialState.FAIL)
            callback = storage.get_heartbeat_stale_trial_callback()
            if callback is not None:  # queue it again, as if its worker had died
                callback(study, frozen)
            raise
        trial.set_user_attr("duration_s", round(time.monotonic() - start, 1))
        trial.set_user_attr("epochs", watch.last_epoch)
        if watch.last_loss is not None:
            trial.set_user_attr("val_loss", watch.last_loss)
        if proc.returncode != 0 or watch.last_value is None:
            reason = (
                watch.failure or f"training exited with code {proc.returncode}; see {trial_dir / 'train.log'}"
            )
            if proc.returncode == 0:
                reason = f"no {self.watched} in {status_path}"
            logger.warning("trial %d failed: %s", trial.number, reason)
            trial.set_user_attr("error", reason)
            return study.tell(trial, state=TrialState.FAIL)
        latest = trial_dir / "train" / "dd_model_latest.pth"
        if latest.exists():
            trial.set_user_attr("checkpoint", str(latest.resolve()))
        value = watch.last_value
        if self.watched != self.metric:  # test_*: the trial's checkpoint evaluated on the test data
            trial.set_user_attr(self.watched, watch.last_value)
            try:
                value = self._evaluate(trial, trial_dir, spec_path, latest)
            except BaseException:
                trial.set_user_attr("error", "interrupted")
                frozen = study.tell(trial, state=TrialState.FAIL)
                callback = storage.get_heartbeat_stale_trial_callback()
                if callback is not None:
                    callback(study, frozen)
                raise
            trial.set_user_attr("duration_s", round(time.monotonic() - start, 1))
            if isinstance(value, str):
                logger.warning("trial %d failed: %s", trial.number, value)
                trial.set_user_attr("error", value)
                return study.tell(trial, state=TrialState.FAIL)
        logger.info("trial %d finished: %s=%.4f", trial.number, self.metric, value)
        return study.tell(trial, value)

    def _evaluate(
        self, trial: optuna.Trial, trial_dir: Path, spec_path: Path, checkpoint: Path
    ) -> float | str:
        """``ddetr evaluate`` of the trial's checkpoint into ``trial_dir/evaluate``.

        Returns:
            The metric (test_mAP or test_mAP50), or the reason the evaluation gave none.
        """
        if not checkpoint.exists():
            return f"no checkpoint to evaluate ({checkpoint})"
        metrics_path = trial_dir / "evaluate" / "metrics.json"
        metrics_path.unlink(missing_ok=True)  # a retried trial must not read an earlier evaluation
        extra = [f"evaluate.checkpoint={checkpoint.resolve()}", "evaluate.results_dir="]
        proc = self._launch(trial_dir, spec_path, self.evaluate_command, extra, "evaluate.log")
        storage = trial.study._storage
        try:
            while proc.poll() is None:
                storage.record_heartbeat(trial._trial_id)
                if self.stop.is_set():
                    raise KeyboardInterrupt
                time.sleep(self.poll_interval)
        except BaseException:
            self._terminate(proc)
            raise
        log = trial_dir / "evaluate.log"
        if proc.returncode != 0:
            return f"evaluation exited with code {proc.returncode}; see {log}"
        try:
            value = json.loads(metrics_path.read_text())[self.metric]
        except (OSError, ValueError, KeyError, TypeError):
            return f"no {self.metric} in {metrics_path}; see {log}"
        if not isinstance(value, (int, float)):
            return f"no {self.metric} in {metrics_path}; see {log}"
        return float(value)
