"""`tracker run`: worker, beat and Flower together, on the embedded defaults, until Ctrl-C.

They are forked from this process once it has imported what they run, so they share
that memory (tracker.ops.forked). The pieces (the broker, child processes, stopping them)
are shared with `tracker demo`, which starts separate processes instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO

from celery import Celery
from celery.utils.nodenames import default_nodename, host_format
from kombu.exceptions import OperationalError

from tracker.config import Settings, broker_url_file
from tracker.db import migrate
from tracker.ops.bundled_redis import BundledRedis
from tracker.ops.children import die_with_parent
from tracker.ops.forked import ForkedChild, preload, run_worker
from tracker.ops.hosted import BeatThread, HostedFlower
from tracker.ops.local_flower import require_flower_auth
from tracker.redis_clients import broker_transport_options


STOP_GRACE_SECONDS = 20.0
# `tracker run`'s workers send a heartbeat event every 10 s rather than Celery's 2 s:
# Flower (which reads the interval from the event) still shows a stopped worker offline
# within 20 s, and an idle small host is not woken every 2 s for it.
IDLE_HEARTBEAT_SECONDS = 10.0
# How long Flower waits for the workers to answer a ping before it starts anyway.
WORKERS_READY_SECONDS = 60.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes] | ForkedChild
    log: IO[bytes] | None = None

    def exited(self) -> bool:
        return self.process.poll() is not None


def celery_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tracker", *arguments]


def worker_node(index: int = 0) -> str:
    # Distinct node names: Flower and `celery inspect` tell the processes apart.
    return f"{'tracker' if index == 0 else f'tracker{index + 1}'}@%h"


def worker_command(loglevel: str, index: int = 0) -> list[str]:
    return celery_command("worker", "--loglevel", loglevel, "--hostname", worker_node(index))


def wait_for_workers(
    broker_url: str,
    nodes: Collection[str],
    keep_waiting: Callable[[], bool],
    timeout: float = WORKERS_READY_SECONDS,
    transport_options: Mapping[str, object] | None = None,
) -> bool:
    """Until every worker node (``worker_node``) answers a ping, or ``timeout`` passes, or
    ``keep_waiting`` says stop. True when all answered.

    Flower inspects the workers once when it starts; a worker not listening yet misses
    the broadcast and Flower logs "Inspect method ... failed" for nothing. Started after
    this, Flower finds them all, and such a line again means something."""
    expected = {host_format(default_nodename(node)) for node in nodes}
    pinger = Celery("tracker-run-ping", broker=broker_url, set_as_current=False)
    # A sentinel:// broker needs the master's name (tracker.redis_clients).
    pinger.conf.broker_transport_options = dict(transport_options or {})
    deadline = time.monotonic() + timeout
    try:
        while keep_waiting() and time.monotonic() < deadline:
            # A broadcast sent before a worker listens is lost: ask again until all answer.
            try:
                replies = pinger.control.ping(destination=sorted(expected), timeout=0.5, limit=len(expected))
            except OperationalError:
                # The broker is not reachable (yet): the workers will say so in their log.
                time.sleep(0.5)
                continue
            if expected <= {node for reply in replies for node in reply}:
                return True
        return False
    finally:
        pinger.close()


def beat_command(loglevel: str, state_dir: Path) -> list[str]:
    return celery_command("beat", "--loglevel", loglevel, "--schedule", str(state_dir / "celerybeat-schedule"))


def start_broker(settings: Settings, state_dir: Path) -> BundledRedis | None:
    """The bundled Redis, started, when TRACKER_BROKER_URL is unset; None otherwise."""
    if settings.broker_url_setting is not None:
        return None
    bundled = BundledRedis(state_dir / "redis")
    bundled.start()
    return bundled


def spawn(name: str, command: list[str], environment: Mapping[str, str], log_path: Path | None = None) -> Child:
    """A child that dies with us. Its output goes to ``log_path``, or to our own stdout."""
    log = log_path.open("ab") if log_path is not None else None
    try:
        process = subprocess.Popen(
            command,
            env=dict(environment),
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            preexec_fn=die_with_parent,
        )
    except BaseException:
        if log is not None:
            log.close()
        raise
    return Child(name, process, log)


def first_exited(children: Iterable[Child]) -> Child | None:
    return next((child for child in children if child.exited()), None)


def stop_children(children: Iterable[Child], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to all (Celery finishes its running tasks), then SIGKILL after ``grace``."""
    children = list(children)
    for child in children:
        if not child.exited():
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
        if child.log is not None:
            child.log.close()


def publish_broker_url(state_dir: Path, url: str) -> Path:
    """Tell the other commands of this install where the bundled broker is (see
    ``tracker.config.BROKER_URL_FILE``). Written atomically, readable by us only."""
    target = broker_url_file(state_dir)
    partial = target.with_name(target.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(url + "\n")
    os.replace(partial, target)
    return target


def withdraw_broker_url(state_dir: Path, url: str) -> None:
    """Remove the file, unless another `tracker run` has replaced it since."""
    target = broker_url_file(state_dir)
    try:
        if target.read_text(encoding="utf-8").strip() == url:
            target.unlink()
    except OSError:
        pass


def run(settings: Settings, *, flower_port: int = 5555, loglevel: str = "INFO") -> int:
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if not migrate_in_subprocess():
        return 1
    migrate.remember_schema_current(settings.database_url)

    bundled = start_broker(settings, state_dir)
    # The workers are forked from this process and read their settings from its
    # environment (see tracker.ops.forked).
    if bundled is not None:
        os.environ["TRACKER_BROKER_URL"] = bundled.url
    broker = os.environ.get("TRACKER_BROKER_URL", settings.broker_url)
    # Even on 127.0.0.1 Flower needs credentials: without them any web page in the
    # operator's browser could use its API (see tracker.ops.local_flower).
    flower_login = require_flower_auth(os.environ, state_dir)
    children: list[Child] = []
    beat: BeatThread | None = None
    stopping = False
    exit_code = 0

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def keep_running() -> bool:
        nonlocal exit_code
        dead = first_exited(children)
        if dead is not None:
            exit_code = _report_stopped(dead.name, dead.process.returncode)
        elif beat is not None and not beat.alive():
            exit_code = _report_stopped("beat", 1)
        return not stopping and exit_code == 0

    try:
        if bundled is not None:
            publish_broker_url(state_dir, bundled.url)
        app = preload()
        # Handlers after preload, before the forks: a Ctrl-C from here on stops the children.
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        for index in range(settings.worker_processes):
            name = "worker" if index == 0 else f"worker{index + 1}"
            target = partial(run_worker, worker_node(index), loglevel, IDLE_HEARTBEAT_SECONDS)
            children.append(Child(name, ForkedChild(name, target)))
        wait_for_workers(
            broker,
            [worker_node(index) for index in range(settings.worker_processes)],
            keep_waiting=lambda: not stopping and first_exited(children) is None,
            transport_options=broker_transport_options(settings),
        )
        # A worker that died while we waited (a bad setting, a port in use) ends the run
        # before anything says it is running.
        if not keep_running():
            return exit_code
        # Beat and Flower live in this process: threads from here on, so no more forks.
        app.log.setup(loglevel=loglevel)
        beat = BeatThread(app, state_dir / "celerybeat-schedule")
        beat.start()
        try:
            flower = HostedFlower(app, address="127.0.0.1", port=flower_port)
        except OSError as error:
            print(f"tracker: Flower cannot listen on 127.0.0.1:{flower_port}: {error.strerror or error}; stopping",
                  file=sys.stderr)
            return 1
        # The shop's scripts need the bundled broker's URL (a new port each run): say it,
        # and where the other commands read it.
        where = f"{broker} (bundled Redis; also in {broker_url_file(state_dir)})" if bundled else "from TRACKER_BROKER_URL"
        print(
            f"tracker running: database {_describe_database(settings.database_url)}, broker {where}, "
            f"Flower at http://127.0.0.1:{flower_port} ({flower_login or 'FLOWER_BASIC_AUTH'}). Ctrl-C stops.",
            flush=True,
        )
        flower.serve(keep_running)
        return exit_code
    finally:
        if beat is not None:
            beat.stop()
        stop_children(children)
        if bundled is not None:
            withdraw_broker_url(state_dir, bundled.url)
            bundled.stop()


def migrate_in_subprocess() -> bool:
    """`tracker db upgrade`, in a process of its own: the children forked from this one
    must inherit no database connection, and nothing of Alembic."""
    done = subprocess.run(
        [sys.executable, "-m", "tracker.cli.main", "db", "upgrade"], stdout=subprocess.DEVNULL, check=False
    )
    if done.returncode != 0:
        print("tracker: the database schema could not be brought up to date (see above); not started",
              file=sys.stderr)
    return done.returncode == 0


def _report_stopped(name: str, code: int | None) -> int:
    print(f"tracker: {name} exited with code {code}; stopping", file=sys.stderr)
    return 1


def _describe_database(url: str) -> str:
    return url if url.startswith("sqlite") else url.split("://", 1)[0] + "://…"
