"""Shared fixtures: a tiny spec on the synthetic dataset (fast to train on a CPU), a throwaway PostgreSQL."""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from ddetr.data.synthetic import generate_synthetic_dataset

HERE = Path(__file__).parent


def tiny_spec_dict(data: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """A tiny model on tiny images: a few seconds per epoch on a CPU."""
    return {
        "results_dir": str(results_dir),
        "model": {
            "backbone": "resnet_18",
            "hidden_dim": 32,
            "nheads": 2,
            "enc_layers": 1,
            "dec_layers": 1,
            "dim_feedforward": 64,
            "num_queries": 20,
            "num_select": 20,
            "num_feature_levels": 1,
            "return_interm_indices": [3],
            "with_box_refine": False,
        },
        "dataset": {
            "num_classes": 4,
            "batch_size": 2,
            "workers": 0,
            "pin_memory": False,
            "train_data_sources": [data["train"]],
            "val_data_sources": [data["val"]],
            "augmentation": {
                "scales": [96],
                "test_random_resize": 96,
                "train_random_resize": [96],
                "train_random_crop_min": 64,
                "train_random_crop_max": 96,
                "random_resize_max_size": 128,
            },
        },
        "train": {"num_epochs": 2, "optim": {"lr_steps": [100]}},
        "automl": {"max_epochs": 2, "max_recommendations": 4},
    }


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=(96, 96)
    )


@pytest.fixture
def tiny_spec_file(tmp_path: Path, synthetic: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(synthetic, tmp_path / "results")))
    return path


# --- A throwaway PostgreSQL server for the storage tests (tests/automl/test_postgres.py, slow) -----------------

PG_USER = "ddetr"
PG_DEBIAN_BINS = "/usr/lib/postgresql/*/bin"


def _pg_fail(message: str) -> NoReturn:
    pytest.fail(f"PostgreSQL test server: {message}", pytrace=False)


def pg_bin_dir() -> Path:
    """The folder of ``initdb``/``pg_ctl``: from PATH, else the newest Debian ``/usr/lib/postgresql/<v>/bin``."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        folder = Path(initdb).resolve().parent  # /usr/local/bin/initdb may link to the versioned folder
        if (folder / "pg_ctl").is_file():
            return folder
    for folder in sorted(
        (Path(p) for p in glob.glob(PG_DEBIAN_BINS)),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0],
        reverse=True,
    ):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    _pg_fail(
        f"initdb and pg_ctl not found on PATH or in {PG_DEBIAN_BINS}; install PostgreSQL "
        "(Debian/Ubuntu: apt-get install -y postgresql; .ci/run does this on CI)"
    )


@dataclass
class PgServer:
    """A running server: TCP on 127.0.0.1:``port``, password authentication for ``PG_USER``."""

    bin_dir: Path
    port: int
    password: str
    count: int = 0

    def url(self, database: str, *, password: str | None = None) -> str:
        """SQLAlchemy URL of ``database`` (psycopg2 driver)."""
        pw = self.password if password is None else password
        return f"postgresql://{PG_USER}:{pw}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        self.count += 1
        name = f"ddetr_test_{self.count}"
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}
        cmd = [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, name]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            _pg_fail(f"createdb {name} failed: {done.stderr.strip()}")
        return self.url(name)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """None to run the server as this user; ``postgres`` when this is root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        _pg_fail("running as root and there is no 'postgres' system user to run the server as")
    return "postgres"


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    return ["su", user, "-s", "/bin/sh", "-c", shlex.join(cmd)]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """initdb into a temporary folder, pg_ctl start on a free loopback port; stopped and removed at the end.

    Fails (never skips) when the PostgreSQL server binaries are missing.
    """
    bin_dir = pg_bin_dir()
    user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="ddetr-pg-"))  # short: the socket path must stay under 108 bytes
    data, sock, log = base / "data", base / "sock", base / "server.log"
    sock.mkdir()
    password = secrets.token_hex(12)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if user is not None:
        record = pwd.getpwnam(user)
        for path in (base, sock, pwfile):
            os.chown(path, record.pw_uid, record.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = _as_user([str(bin_dir / args[0]), *args[1:]], user)
        done = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            _pg_fail(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")
        return done

    started = False
    try:
        run(
            "initdb", "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        with (data / "postgresql.conf").open("a") as fh:
            fh.write(
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{sock}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        for attempt in range(3):
            port = _free_port()
            done = run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", f"-p {port}",
                       "start", check=False)  # fmt: skip
            if done.returncode == 0:
                started = True
                break
            text = log.read_text() if log.exists() else ""
            if "already in use" not in text or attempt == 2:
                _pg_fail(f"pg_ctl start failed: {done.stderr.strip()}\n{text[-2000:]}")
        server = PgServer(bin_dir, port, password)
        yield server
    finally:
        if started:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> str:
    """A new empty database on the session's PostgreSQL server, as a SQLAlchemy URL with the password."""
    return postgres_server.create_database()
