"""`tracker run`: worker, beat and Flower together, on the embedded defaults, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from tracker.config import Settings
from tracker.db import migrate
from tracker.ops.bundled_redis import BundledRedis
from tracker.ops.children import die_with_parent


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


def celery_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tracker", *arguments]


def run(settings: Settings, *, flower_port: int = 5555, loglevel: str = "INFO") -> int:
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.database_url)

    bundled: BundledRedis | None = None
    environment = dict(os.environ)
    if settings.broker_url_setting is None:
        bundled = BundledRedis(state_dir / "redis")
        bundled.start()
        environment["TRACKER_BROKER_URL"] = bundled.url
    broker = environment.get("TRACKER_BROKER_URL", settings.broker_url)
    # Local mode only: Flower listens on 127.0.0.1, so its HTTP API (which shops use to
    # enqueue from any language) may answer without credentials. Deployments use
    # `tracker flower`, which insists on FLOWER_BASIC_AUTH.
    environment.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    # Local mode: Flower listens on loopback only; production deploys use `tracker flower`.
    commands = {
        "worker": celery_command("worker", "--loglevel", loglevel, "--hostname", "tracker@%h"),
        "beat": celery_command("beat", "--loglevel", loglevel, "--schedule", str(state_dir / "celerybeat-schedule")),
        "flower": celery_command("flower", "--address=127.0.0.1", f"--port={flower_port}"),
    }
    children: list[Child] = []
    stopping = False

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for name, command in commands.items():
            children.append(Child(name, subprocess.Popen(command, env=environment, preexec_fn=die_with_parent)))
        print(
            f"tracker running: database {_describe_database(settings.database_url)}, "
            f"broker {'bundled Redis at ' + broker if bundled else 'TRACKER_BROKER_URL'}, "
            f"Flower at http://127.0.0.1:{flower_port}. Ctrl-C stops.",
            flush=True,
        )
        while not stopping:
            for child in children:
                if child.process.poll() is not None:
                    print(f"tracker: {child.name} exited with code {child.process.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        _stop(children)
        if bundled is not None:
            bundled.stop()


def _describe_database(url: str) -> str:
    return url if url.startswith("sqlite") else url.split("://", 1)[0] + "://…"


def _stop(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
