"""The repository's Procfile, run as Heroku, Dokku or honcho run it: the `release` line on
a fresh database, then `worker`, `beat`, `flower` and `exporter` under honcho, fed by a
shop's plain Celery client, and stopped the way a platform stops them (SIGTERM)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from tests.integration.helpers import add_provider, count_orders, shop_client
from tests.support.network import answers, listening
from tests.support.processes import wait_until
from tracker.config import reset_settings
from tracker.db.models import Order
from tracker.db.session import dispose_engines, unit_of_work
from tracker.ops.bundled_redis import free_port
from tracker.sim.server import SimServer

# Celery's record of a pool child killed mid-task: the "Task handler raised error" line,
# through the closing quotes of the WorkerLostError's traceback.
WORKER_LOST = re.compile(
    r"^[^\n]*Task handler raised error: WorkerLostError\('Worker exited prematurely: signal 15 \(SIGTERM\)[^\n]*\n"
    r"(?:[^\n]*\n)*?[^\n]*\| \"\"\"\n"
    r"(?:[^\n]*\n)*?[^\n]*\| billiard\.exceptions\.WorkerLostError: Worker exited prematurely: signal 15 \(SIGTERM\)[^\n]*\n"
    r"[^\n]*\| \"\"\"\n",
    re.MULTILINE,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
AUTH = ("ops", "procfile-pass")
# honcho gives each process type its own PORT: the base for the first named, +100 for
# the next, so `start worker beat flower exporter` puts Flower on PORT + 200 and the
# exporter on PORT + 300.
FLOWER_PORT_OFFSET = 200
EXPORTER_PORT_OFFSET = 300
ORDERS = 60


def procfile_lines() -> dict[str, str]:
    lines = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            lines[name.strip()] = command.strip()
    return lines


def flower_port() -> int:
    while True:
        port = free_port()
        if port - FLOWER_PORT_OFFSET > 1024:
            return port


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_procfile_releases_then_runs_worker_beat_and_flower(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = procfile_lines()
    assert set(lines) == {"release", "worker", "beat", "flower", "exporter"}
    # Beat makes its own state directory (test_plain_celery.py): no shell crutch here.
    assert lines["beat"].startswith("celery -A tracker beat"), lines["beat"]
    # A database nothing has migrated yet: the release line must create the schema.
    database = f"sqlite:///{tmp_path / 'procfile.db'}"
    monkeypatch.setenv("TRACKER_DATABASE_URL", database)
    reset_settings()
    dispose_engines()
    port = flower_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **tracker_env,
        "TRACKER_DATABASE_URL": database,
        "FLOWER_BASIC_AUTH": ":".join(AUTH),
        "PORT": str(port - FLOWER_PORT_OFFSET),
        # The Procfile names `tracker` and `celery`: the ones installed with this Python.
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }

    def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tracker", *arguments], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)

    unmigrated = cli("provider", "list")
    assert unmigrated.returncode == 1 and "run `tracker db upgrade` first" in unmigrated.stderr
    release = subprocess.run(lines["release"], shell=True, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert release.returncode == 0, release.stderr
    assert cli("provider", "list").returncode == 0

    log_path = tmp_path / "honcho.log"
    with SimServer(dialect="standard", speed=10.0, seed=51) as sim, log_path.open("wb") as log:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=ORDERS, service=1, pending_s=2, progress_s=10)
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "-f", str(REPO / "Procfile"), "start", "worker", "beat", "flower", "exporter"],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_until(
                lambda: answers(f"http://127.0.0.1:{port}/healthcheck") or honcho.poll() is not None,
                timeout=60, what="Flower from the Procfile",
            )
            assert honcho.poll() is None, log_path.read_text()
            shop_client(broker_url).send_task("tracker.track_orders", args=["panel", ids], kwargs={"service": 1})
            wait_until(lambda: count_orders("panel", final=True) == ORDERS, timeout=60, what="all orders final")
            # Flower (behind its basic auth) sees the Procfile's worker. Its inspect waits
            # about a second for replies; on a loaded machine one round may come back empty.
            def flower_sees_the_worker() -> bool:
                workers = requests.get(f"http://127.0.0.1:{port}/api/workers?refresh=1", auth=AUTH, timeout=30)
                assert workers.status_code == 200, workers.text
                return any(name.startswith("worker@") for name in workers.json())

            wait_until(flower_sees_the_worker, timeout=30, interval=1, what="Flower listing the Procfile's worker")
            # The exporter, on its own PORT, counts what the worker recorded.
            exporter_url = f"http://127.0.0.1:{port - FLOWER_PORT_OFFSET + EXPORTER_PORT_OFFSET}/metrics"
            wait_until(lambda: answers(exporter_url), timeout=30, what="the Procfile's exporter")
            scraped = requests.get(exporter_url, timeout=30).text
            orders = {
                sample.labels["status"]: sample.value
                for family in text_string_to_metric_families(scraped) if family.name == "tracker_orders"
                for sample in family.samples if sample.labels["provider"] == "panel"
            }
            assert sum(orders.values()) == ORDERS, scraped
            assert honcho.poll() is None, "every process must still be running"
        finally:
            # What a platform does to stop a dyno: SIGTERM to the whole process group.
            if honcho.poll() is None:
                os.killpg(honcho.pid, signal.SIGTERM)
            try:
                honcho.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(honcho.pid, signal.SIGKILL)
                raise

    output = log_path.read_text(errors="replace")
    for name in ("worker.1", "beat.1", "flower.1", "exporter.1"):
        assert re.search(rf"{name}\s+\| ", output), output[-3000:]
        assert f"{name} stopped" in output, output[-3000:]
    assert "Warm shutdown" in output, "the worker must finish its tasks on SIGTERM"
    # The platform's SIGTERM reaches the pool's children too: one that is running a task
    # then (a tick's dispatcher, say) dies with it, and Celery logs that child's
    # WorkerLostError; its message goes back to the queue (acks late). Any other
    # traceback is a failure.
    assert "Traceback" not in WORKER_LOST.sub("", output), output[-3000:]
    assert not listening(port)
    truth = sim.truth(ids)
    with unit_of_work() as session:
        statuses = dict(session.execute(select(Order.external_id, Order.status)).all())
    assert statuses == {order_id: truth[order_id]["status"] for order_id in ids}  # type: ignore[index]
    dispose_engines()
