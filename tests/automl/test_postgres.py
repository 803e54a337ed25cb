"""The study in a real PostgreSQL server (a throwaway one per session: conftest.py's ``postgres_server``).

The same searches as test_search.py runs on SQLite, with the fake trainer: results, two worker processes on
one study, resume after a kill (stale heartbeat, retried trial), workers creating the tables at once, and
one-line errors from a server that refuses the login. Slow: they need the PostgreSQL server binaries.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from automl_helpers import (
    FAKE,
    LR_SEARCH,
    kill_during_second_trial,
    precreate_study,
    resume_retries_the_dead_trial,
    started_count,
    two_workers_share_one_study,
)
from ddetr.automl.search import run_search
from ddetr.automl.storage import _schema_race, open_storage, with_driver
from ddetr.errors import SpecError
from ddetr.spec.load import load_spec
from ddetr.status import read_status

pytestmark = pytest.mark.slow


def _study(url: str, name: str = "ddetr-automl") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def test_bare_url_gets_the_installed_driver(postgres_url: str) -> None:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the postgres extra installs psycopg2
    assert postgres_url.startswith("postgresql://")
    assert with_driver(postgres_url).startswith("postgresql+psycopg2://")
    rdb = open_storage(postgres_url)
    assert rdb.engine.dialect.driver == "psycopg2" and rdb.engine.dialect.name == "postgresql"


def test_search_prunes_and_writes_results(
    tiny_spec_file: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.6")  # slow enough to be pruned before the second epoch
    spec = load_spec(
        tiny_spec_file, ["automl.algorithm=hyperband", f"automl.storage={postgres_url}", *LR_SEARCH]
    )
    results = Path(spec.results_dir)
    # the second is best; the last two are worse at epoch 1 (pruned)
    precreate_study(open_storage(postgres_url), [1e-7, 3e-4, 1e-6, 1e-5])
    out = run_search(spec, results / "automl", train_command=FAKE, poll_interval=0.05)
    trials = _study(postgres_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 2
    assert (out["complete"], out["pruned"], out["best_trial"]) == (2, 2, 1)
    assert all(t.user_attrs["epochs"] == (2 if t.number < 2 else 1) for t in trials)
    rows = list(csv.DictReader((results / "automl" / "leaderboard.csv").open()))
    assert [r["trial"] for r in rows][:2] == ["1", "0"] and len(rows) == 4
    assert float(rows[0]["val_mAP"]) == pytest.approx(trials[1].value)
    best = json.loads((results / "automl" / "best_trial.json").read_text())
    assert best["trial"] == 1 and Path(best["checkpoint"]).is_file() and "trial_001" in best["checkpoint"]
    best_spec = load_spec(results / "automl" / "best_spec.yaml")
    assert best_spec.train.optim.lr == pytest.approx(3e-4) and best_spec.automl_policy == "off"
    assert not (results / "automl" / "study.db").exists()  # nothing went to the default SQLite file
    events = read_status(results / "automl" / "status.json")
    assert [e["status"] for e in events] == ["STARTED"] + ["RUNNING"] * 4 + ["SUCCESS"]
    password = postgres_url.split(":")[2].split("@")[0]
    assert "postgresql://ddetr:***@127.0.0.1" in events[0]["message"]
    assert password not in (results / "automl" / "status.json").read_text()


def test_two_workers_share_one_study(tiny_spec_file: Path, postgres_url: str) -> None:
    two_workers_share_one_study(
        tiny_spec_file, lambda _: _study(postgres_url), f"automl.storage={postgres_url}"
    )


def test_resume_after_kill_retries_the_dead_trial(tiny_spec_file: Path, postgres_url: str) -> None:
    overrides = [
        "automl.algorithm=random",
        "automl.max_recommendations=3",
        "automl.max_epochs=3",
        f"automl.storage={postgres_url}",
    ]
    _, first = kill_during_second_trial(tiny_spec_file, overrides, lambda _: _study(postgres_url))
    # the server's clock decides that the dead trial's heartbeat is stale (grace period 3 s)
    study = resume_retries_the_dead_trial(tiny_spec_file, overrides, lambda _: _study(postgres_url))
    assert study._study_id == first._study_id


def test_rerun_continues_the_study_and_adds_trials(tiny_spec_file: Path, postgres_url: str) -> None:
    overrides = ["automl.algorithm=random", f"automl.storage={postgres_url}"]
    spec = load_spec(tiny_spec_file, [*overrides, "automl.max_recommendations=2"])
    automl_dir = Path(spec.results_dir) / "automl"
    run_search(spec, automl_dir, train_command=FAKE, poll_interval=0.05)
    first = _study(postgres_url).get_trials()
    more = load_spec(tiny_spec_file, [*overrides, "automl.max_recommendations=3"])
    out = run_search(more, automl_dir, train_command=FAKE, poll_interval=0.05)
    trials = _study(postgres_url).get_trials()
    assert out["complete"] == 3 and len(trials) == 3
    assert [t.params for t in trials[:2]] == [t.params for t in first]
    assert all(started_count(automl_dir / f"trial_{i:03d}") == 1 for i in range(3))
    assert len(optuna.get_all_study_names(open_storage(postgres_url))) == 1


OPEN_AT = """
import sys, time
from ddetr.automl.storage import open_storage, open_study, ensure_slots
import optuna
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
rdb = open_storage(sys.argv[1])
study, created = open_study(rdb, "s", "maximize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
ensure_slots(study, rdb, 8)
print("created" if created else "joined")
"""


def test_workers_creating_the_tables_at_once(postgres_server: Any) -> None:  # conftest.PgServer
    # each round: a new database, four processes opening it at the same moment (CREATE TYPE/TABLE race)
    for _ in range(3):
        url = postgres_server.create_database()
        start = time.time() + 5  # after every process has imported optuna
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_AT, url, str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, "\n".join(outs)
        assert sorted(o.strip().splitlines()[-1] for o in outs) == ["created"] + ["joined"] * 3
        assert len(_study(url, "s").get_trials()) == 8


def test_lost_create_race_is_retried_not_reported(postgres_url: str) -> None:
    # the errors PostgreSQL gives the loser of a CREATE race; a refused login is not one of them
    engine = create_engine(with_driver(postgres_url))
    errors = []
    for statement in ("CREATE TYPE racer AS ENUM ('a')", "CREATE TABLE racer_t (i int)"):
        for attempt in range(2):
            try:
                with engine.begin() as conn:
                    conn.execute(text(statement))
            except DBAPIError as exc:
                assert attempt == 1
                errors.append(exc)
    engine.dispose()
    assert [type(e.orig).__name__ for e in errors] == ["DuplicateObject", "DuplicateTable"]
    assert all(_schema_race(e) for e in errors)
    refused = create_engine(make_url(with_driver(postgres_url)).set(password="wrong"))
    with pytest.raises(DBAPIError) as info:
        refused.connect()
    assert not _schema_race(info.value)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("password", "password authentication failed"),
        ("user", "password authentication failed"),
        ("database", 'database "no_such_db" does not exist'),
    ],
)
def test_refused_login_is_one_line_error(
    tiny_spec_file: Path, postgres_server: Any, change: str, reason: str
) -> None:
    server = postgres_server
    url = {
        "password": server.url("postgres", password="wrong-s3cret"),
        "user": f"postgresql://nobody:wrong-s3cret@127.0.0.1:{server.port}/postgres",
        "database": server.url("no_such_db"),
    }[change]
    spec = load_spec(tiny_spec_file, [f"automl.storage={url}"])
    with pytest.raises(SpecError, match=r"automl\.storage") as info:
        run_search(spec, Path(spec.results_dir) / "automl", train_command=FAKE)
    message = str(info.value)
    assert "\n" not in message and reason in message
    assert "s3cret" not in message and server.password not in message
    assert "postgresql://" in message and "+psycopg2" not in message  # the URL as the user gave it
    assert not list((Path(spec.results_dir) / "automl").glob("trial_*"))
