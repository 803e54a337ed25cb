"""What a search leaves in ``<results_dir>/automl/``: leaderboard.csv, best_spec.yaml, best_trial.json, plots.

Everything is computed from the study in the storage, so any worker can write it and the files describe the
whole search, whichever machines ran its trials. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from ddetr.automl.runner import trial_dir_name
from ddetr.automl.storage import retried_numbers
from ddetr.fileio import atomic_path, atomic_write_bytes
from ddetr.spec.load import dump_spec, validate_spec
from ddetr.spec.sections import Spec

logger = logging.getLogger(__name__)

__all__ = [
    "best_trial",
    "leaderboard_rows",
    "write_best",
    "write_leaderboard",
    "write_plots",
    "write_reports",
]


def _loss(t: FrozenTrial) -> float:
    loss = t.user_attrs.get("val_loss")
    return float(loss) if isinstance(loss, (int, float)) else math.inf


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial (equal metrics: the lower final val_loss), or None when none has completed."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(done, key=lambda t: (sign * float(t.value), -_loss(t), -t.number))  # type: ignore[arg-type]


def _duration(t: FrozenTrial) -> float | None:
    if "duration_s" in t.user_attrs:
        return float(t.user_attrs["duration_s"])
    if t.datetime_start and t.datetime_complete:
        return round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
    return None


def shown_value(t: FrozenTrial) -> float | None:
    """The trial's metric: its value, or for a pruned trial the metric at its last validation."""
    if isinstance(t.user_attrs.get("last_metric"), (int, float)):  # Optuna stores the pruner's value
        return float(t.user_attrs["last_metric"])
    if t.value is not None:
        return t.value
    if t.intermediate_values:
        return t.intermediate_values[max(t.intermediate_values)]
    return None


def leaderboard_rows(study: optuna.Study, metric: str) -> list[dict[str, Any]]:
    """One row per trial, best first: completed trials by value, then pruned (by last value), then the rest."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    params = sorted({name for t in trials for name in t.params})
    rows = []
    for t in trials:
        value = shown_value(t)
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            metric: value,
            "epochs": t.user_attrs.get("epochs", ""),
            "duration_s": _duration(t),
            "checkpoint": t.user_attrs.get("checkpoint", ""),
            "note": t.user_attrs.get("error", "")
            or ("retried as a new trial" if t.number in retried else "")
            or (
                f"retry of trial {t.system_attrs['failed_trial']}" if "failed_trial" in t.system_attrs else ""
            ),
        }
        for name in params:
            row[name] = t.params.get(name, "")
        rows.append(row)
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}

    losses = {t.number: _loss(t) for t in trials}

    def key(row: dict[str, Any]) -> tuple[int, float, float, int]:
        v = row[metric]
        v = -math.inf if v is None else (v if maximize else -v)
        return order.get(row["state"], 5), -v, losses[row["trial"]], row["trial"]

    return sorted(rows, key=key)


def write_leaderboard(study: optuna.Study, metric: str, path: Path) -> Path:
    """Write ``leaderboard.csv``: trial, state, metric, epochs, duration_s, checkpoint, note, one column per parameter."""
    rows = leaderboard_rows(study, metric)
    head = ["trial", "state", metric, "epochs", "duration_s", "checkpoint", "note"]
    columns = head + sorted({k for r in rows for k in r} - set(head))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path


def write_best(study: optuna.Study, base: Spec, automl_dir: Path) -> dict[str, Any] | None:
    """Write ``best_spec.yaml`` (retrains the best trial into ``<results_dir>/train``) and ``best_trial.json``.

    Returns:
        ``{"trial", "value", "params", "checkpoint", "spec"}`` of the best trial, or None when none completed.
    """
    best = best_trial(study)
    if best is None:
        return None
    trial_spec_path = Path(best.user_attrs.get("dir", automl_dir / trial_dir_name(best.number))) / "spec.yaml"
    if trial_spec_path.is_file():
        data = yaml.safe_load(trial_spec_path.read_text(encoding="utf-8"))
        data["results_dir"] = base.results_dir  # retraining writes to <results_dir>/train
        spec = validate_spec(data)
    else:  # the trial ran on another machine: rebuild its spec from the parameters
        from ddetr.automl.space import apply_values

        spec = apply_values(
            base,
            best.params,
            {"train.num_epochs": base.automl.max_epochs, "automl_policy": "off", "automl.enabled": False},
        )
    # never the key in a file: retraining an encrypted search takes it from -k or DDETR_ENCRYPTION_KEY
    best_spec = dump_spec(spec.model_copy(update={"encryption_key": ""}), automl_dir / "best_spec.yaml")
    info = {
        "trial": best.number,
        "value": best.value,
        "metric": base.automl.metric,
        "params": best.params,
        "checkpoint": best.user_attrs.get("checkpoint", ""),
        "spec": str(best_spec),
    }
    atomic_write_bytes(automl_dir / "best_trial.json", (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    return info


def write_plots(study: optuna.Study, metric: str, automl_dir: Path) -> list[Path]:
    """``metric_vs_trial.png`` (each trial's value and the best so far), ``param_importances.png`` and its numbers
    (``param_importances.json``, parameter -> importance; empty when not computed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    written: list[Path] = []
    trials = [
        t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    fig, ax = plt.subplots(figsize=(7, 4))
    best_x, best_y, best = [], [], None
    for state, marker, colour in (
        (TrialState.COMPLETE, "o", "tab:blue"),
        (TrialState.PRUNED, "x", "tab:grey"),
    ):
        shown = [(t.number, shown_value(t)) for t in trials if t.state == state]
        points = [(x, y) for x, y in shown if y is not None]
        ax.scatter(
            [x for x, _ in points],
            [y for _, y in points],
            marker=marker,
            color=colour,
            label=state.name.lower(),
        )
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.value is not None:
            if best is None or (t.value > best if maximize else t.value < best):
                best = t.value
        if best is not None:
            best_x.append(t.number)
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    ax.legend(loc="best")
    fig.tight_layout()
    path = automl_dir / "metric_vs_trial.png"
    with atomic_path(path) as tmp:  # rewritten after every trial: a reader never sees half an image
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    written.append(path)

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    importances: dict[str, float] = {}
    if len(complete) >= 2:
        try:
            with warnings.catch_warnings():  # "few trials per regime": expected in small searches
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as exc:
            logger.info("parameter importances not computed: %s", exc)
    # the numbers too, for the run report (report.html) to draw
    atomic_write_bytes(
        automl_dir / "param_importances.json",
        (json.dumps({k: float(v) for k, v in importances.items()}, indent=2) + "\n").encode("utf-8"),
    )
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(importances) + 1)))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (Optuna default evaluator)")
    else:
        ax.text(0.5, 0.5, "not enough completed trials with varying parameters", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("parameter importances")
    fig.tight_layout()
    path = automl_dir / "param_importances.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def write_reports(study: optuna.Study, base: Spec, automl_dir: Path, *, plots: bool = True) -> dict[str, Any]:
    """Leaderboard, best spec and (optionally) plots; returns the best trial's summary (empty when none)."""
    metric = base.automl.metric
    write_leaderboard(study, metric, automl_dir / "leaderboard.csv")
    best = write_best(study, base, automl_dir) or {}
    if plots:
        write_plots(study, metric, automl_dir)
    return best
