"""Plain `celery -A tracker worker` and `celery -A tracker beat`, as systemd units and
Kubernetes pods run them: no wrapper script, no TRACKER_STATE_DIR, and a working
directory nothing has prepared."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.integration.helpers import shop_client
from tests.support import processes

pytestmark = pytest.mark.integration

CELERY = str(Path(sys.executable).parent / "celery")


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    workdir = tmp_path / "empty"
    workdir.mkdir()
    return workdir


@pytest.fixture
def plain_env(database_url: str, broker_url: str) -> Iterator[dict[str, str]]:
    """Only what an operator sets: the database, the broker, the key outside local mode."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env.update(
        TRACKER_DATABASE_URL=database_url,
        TRACKER_BROKER_URL=broker_url,
        # Beat then sends its first dispatcher ticks within a second or two.
        TRACKER_TICK_INTERVAL="1",
    )
    if not database_url.startswith("sqlite"):
        env["TRACKER_SECRET_KEY"] = Fernet.generate_key().decode()
    yield env


def test_plain_beat_starts_in_an_empty_directory(
    plain_env: dict[str, str], empty_dir: Path, tmp_path: Path
) -> None:
    beat = processes.start("beat", [CELERY, "-A", "tracker", "beat", "--loglevel", "INFO"], plain_env, tmp_path / "logs", cwd=empty_dir)
    try:
        beat.wait_for_output("beat: Starting", timeout=60)
        # Beat opens its schedule file after that line; sending ticks means it got past it.
        beat.wait_for_output("Sending due task dispatch-polls", timeout=30)
        assert beat.alive(), beat.output()
        assert "Traceback" not in beat.output(), beat.output()
    finally:
        beat.stop()
    assert list((empty_dir / ".tracker").glob("celerybeat-schedule*")), "beat keeps its schedule in the state dir"


def _start_plain_worker(name: str, env: dict[str, str], cwd: Path, logs: Path) -> processes.Proc:
    """`celery -A tracker worker` as an operator types it, once it says it is ready."""
    worker = processes.start(
        "worker", [CELERY, "-A", "tracker", "worker", "--loglevel", "INFO", "--hostname", f"{name}@%h"],
        env, logs, cwd=cwd,
    )
    try:
        worker.wait_for_output(" ready.", timeout=60)
    except BaseException:
        worker.stop()
        raise
    return worker


def test_plain_worker_starts_in_an_empty_directory(
    plain_env: dict[str, str], broker_url: str, empty_dir: Path, tmp_path: Path
) -> None:
    worker = _start_plain_worker(f"plain-{os.getpid()}", plain_env, empty_dir, tmp_path / "logs")
    try:
        # Every core by default: one prefork child per core, and one for control tasks.
        assert f"concurrency: {len(os.sched_getaffinity(0)) + 1} (prefork)" in worker.output()
        # Both queues, control first.
        assert re.search(r"\.> celery .*\n.*\.> tracker\.polls ", worker.output()), worker.output()
        # One dispatcher tick, as beat would send it: the worker reaches the database too.
        shop_client(broker_url).send_task("tracker.dispatch_polls")
        worker.wait_for_output("succeeded", timeout=30)
        assert worker.alive(), worker.output()
        assert "Traceback" not in worker.output(), worker.output()
    finally:
        worker.stop()


def test_plain_worker_on_the_default_sqlite_creates_its_schema(
    broker_url: str, empty_dir: Path, tmp_path: Path
) -> None:
    """Nothing configured but the broker: local mode, SQLite in the working directory. As
    `tracker run` and every CLI command do in local mode, the worker brings the schema up to
    date at start; it used to fail every task with "no such table: providers"."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env.update(TRACKER_BROKER_URL=broker_url)
    worker = _start_plain_worker(f"plain-sqlite-{os.getpid()}", env, empty_dir, tmp_path / "logs")
    try:
        shop_client(broker_url).send_task("tracker.dispatch_polls")
        worker.wait_for_output("succeeded", timeout=30)
        for trouble in ("no such table", "Traceback", "retry:"):
            assert trouble not in worker.output(), worker.output()[-3000:]
    finally:
        worker.stop()
    assert (empty_dir / "tracker.db").exists()
