"""`tracker run`: worker, beat and Flower together, on the embedded defaults, until Ctrl-C.

The pieces (the broker, child processes, stopping them) are shared with `tracker demo`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
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
from tracker.ops.local_flower import require_flower_auth

STOP_GRACE_SECONDS = 20.0
# How long Flower waits for the workers to answer a ping before it starts anyway.
WORKERS_READY_SECONDS = 60.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
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
    broker_url: str, nodes: Collection[str], keep_waiting: Callable[[], bool], timeout: float = WORKERS_READY_SECONDS
) -> bool:
    """Until every worker node (``worker_node``) answers a ping, or ``timeout`` passes, or
    ``keep_waiting`` says stop. True when all answered.

    Flower inspects the workers once when it starts; a worker not listening yet misses
    the broadcast and Flower logs "Inspect method ... failed" for nothing. Started after
    this, Flower finds them all, and such a line again means something."""
    expected = {host_format(default_nodename(node)) for node in nodes}
    pinger = Celery("tracker-run-ping", broker=broker_url, set_as_current=False)
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
    migrate.upgrade(settings.database_url)

    environment = dict(os.environ)
    bundled = start_broker(settings, state_dir)
    if bundled is not None:
        environment["TRACKER_BROKER_URL"] = bundled.url
    broker = environment.get("TRACKER_BROKER_URL", settings.broker_url)
    # Even on 127.0.0.1 Flower needs credentials: without them any web page in the
    # operator's browser could use its API (see tracker.ops.local_flower).
    flower_login = require_flower_auth(environment, state_dir)
    commands = {
        **{
            "worker" if index == 0 else f"worker{index + 1}": worker_command(loglevel, index)
            for index in range(settings.worker_processes)
        },
        "beat": beat_command(loglevel, state_dir),
    }
    flower_command = celery_command("flower", "--address=127.0.0.1", f"--port={flower_port}")
    children: list[Child] = []
    stopping = False

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if bundled is not None:
            publish_broker_url(state_dir, bundled.url)
        for name, command in commands.items():
            children.append(spawn(name, command, environment))
        wait_for_workers(
            broker,
            [worker_node(index) for index in range(settings.worker_processes)],
            keep_waiting=lambda: not stopping and first_exited(children) is None,
        )
        if stopping:
            return 0
        children.append(spawn("flower", flower_command, environment))
        # The shop's scripts need the bundled broker's URL (a new port each run): say it,
        # and where the other commands read it.
        where = f"{broker} (bundled Redis; also in {broker_url_file(state_dir)})" if bundled else "from TRACKER_BROKER_URL"
        print(
            f"tracker running: database {_describe_database(settings.database_url)}, broker {where}, "
            f"Flower at http://127.0.0.1:{flower_port} ({flower_login or 'FLOWER_BASIC_AUTH'}). Ctrl-C stops.",
            flush=True,
        )
        while not stopping:
            dead = first_exited(children)
            if dead is not None:
                print(f"tracker: {dead.name} exited with code {dead.process.returncode}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        stop_children(children)
        if bundled is not None:
            withdraw_broker_url(state_dir, bundled.url)
            bundled.stop()


def _describe_database(url: str) -> str:
    return url if url.startswith("sqlite") else url.split("://", 1)[0] + "://…"
