"""Plain `celery -A tracker worker` and `celery -A tracker beat`, as systemd units and
Kubernetes pods run them: no wrapper script, no TRACKER_STATE_DIR, and a working
directory nothing has prepared."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

from tests.integration.helpers import shop_client
from tests.support import processes
from tests.support.databases import SERVER_DATABASES, server_database

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


@pytest.fixture(params=SERVER_DATABASES)
def unmigrated_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database server's fresh database that nobody ran `tracker db upgrade` on."""
    create, drop = server_database(request, str(request.param))
    url = create()
    try:
        yield url
    finally:
        drop(url)


def test_a_plain_worker_on_an_unmigrated_database_says_to_run_the_upgrade(
    unmigrated_database_url: str, broker_url: str, empty_dir: Path, tmp_path: Path
) -> None:
    """Outside local mode migrations are the deploy step's (`tracker db upgrade`). A worker
    started before it (or instead of it) used to retry every task on "relation
    "providers" does not exist" (MariaDB: "Table ... doesn't exist") at INFO and never
    said what to do."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env.update(
        TRACKER_DATABASE_URL=unmigrated_database_url,
        TRACKER_BROKER_URL=broker_url,
        TRACKER_SECRET_KEY=Fernet.generate_key().decode(),
    )
    worker = _start_plain_worker(f"plain-unmigrated-{os.getpid()}", env, empty_dir, tmp_path / "logs")
    try:
        shop_client(broker_url).send_task("tracker.dispatch_polls")
        worker.wait_for_output("tracker db upgrade", timeout=30)
    finally:
        worker.stop()
    advice = [line for line in worker.output().splitlines() if "tracker db upgrade" in line]
    assert "ERROR" in advice[0], advice
    assert "schema" in advice[0], advice


def test_an_idle_plain_worker_waits_on_its_queues_five_seconds_a_call(
    plain_env: dict[str, str], broker_url: str, empty_dir: Path, tmp_path: Path
) -> None:
    """kombu's BRPOP on empty queues times out after 1 s, and the worker's main process then
    wakes and asks again: 60 wake-ups a minute, a fifth of its idle CPU. A message pushed
    meanwhile ends the wait at once, so the task consumer waits 5 s a call. Only it: the
    replies mingle reads at start keep 1 s, since closing a channel waits for its BRPOP
    (5 s there held the worker's start 4 s). See docs/performance.md."""
    database = int(broker_url.rsplit("/", 1)[1])
    with monitored_commands(broker_url) as commands:
        worker = _start_plain_worker(f"plain-brpop-{os.getpid()}", plain_env, empty_dir, tmp_path / "logs")
        try:
            ready = len(commands)
            time.sleep(7.0)
        finally:
            worker.stop()
    waits = [command for db, command in commands if db == database and command.startswith("BRPOP ")]
    replies = [wait for wait in waits if ".reply.celery.pidbox" in wait]
    for_tasks = [wait for wait in waits if " tracker.polls " in wait]
    assert replies, waits
    assert {wait.rsplit(" ", 1)[1] for wait in replies} == {"1"}, replies
    assert {wait.rsplit(" ", 1)[1] for wait in for_tasks} == {"5"}, for_tasks
    # Once ready, one consuming connection for 7 s: two or three calls, not seven.
    idle = [command for db, command in commands[ready:] if db == database and command.startswith("BRPOP ")]
    assert len([wait for wait in idle if " tracker.polls " in wait]) <= 3, idle


@contextmanager
def monitored_commands(url: str) -> Iterator[list[tuple[int, str]]]:
    """What Redis's MONITOR shows while the block runs: (database number, command) pairs,
    appended as they come."""
    seen: list[tuple[int, str]] = []
    marker = f"monitor-ends-{os.getpid()}"
    client = redis.Redis.from_url(url)
    started = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            started.set()
            while True:
                entry = monitor.next_command()
                if marker in str(entry["command"]):
                    return
                seen.append((int(entry["db"]), str(entry["command"])))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started.wait(timeout=10)
    try:
        yield seen
    finally:
        # MONITOR blocks until Redis sees a command: this one ends the watch.
        client.echo(marker)
        watcher.join(timeout=10)
        client.close()
