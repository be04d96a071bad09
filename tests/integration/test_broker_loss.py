"""A worker outlives its broker: Redis goes away while a task is running (a restart, a
failover, a dead link) and comes back; the worker reconnects and takes tasks again.

With Celery 5.7.0 it did not: on losing the connection, the consumer closed it at once,
closing the channel requeued the running task's unacknowledged message through a
transport already torn down, and the ``AttributeError`` ended the worker ("Unrecoverable
error"). The multi-host harness lost two of its three workers to a Sentinel failover
that way. Redis of the test's own (the bundled server), so it can be stopped.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.integration.helpers import shop_client
from tests.support import processes
from tests.support.deployment import applied_settings, settings_under_test
from tests.support.processes import wait_until
from tests.support.shop_endpoint import ShopEndpoint
from tracker.config import get_settings
from tracker.core.clock import utcnow
from tracker.core.outbox_events import NewEvent
from tracker.db import migrate
from tracker.db.session import unit_of_work
from tracker.ops.bundled_redis import BundledRedis
from tracker.outbox.delivery import record_events

pytestmark = pytest.mark.integration


def test_a_worker_running_a_task_survives_its_broker_going_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_server = BundledRedis(tmp_path / "redis")
    redis_server.start()
    database_url = f"sqlite:///{tmp_path / 'tracker.db'}"
    migrate.upgrade(database_url)
    # A shop that takes 3 s over each webhook: a delivery task is running when Redis goes.
    with ShopEndpoint(delay_s=3.0) as shop:
        values = {
            **settings_under_test(database_url, redis_server.url, tmp_path / "state"),
            "TRACKER_WEBHOOK_URL": shop.url,
            "TRACKER_WEBHOOK_SECRET": "whsec-broker-loss",
        }
        with applied_settings(values, monkeypatch) as env:
            with unit_of_work() as session:
                record_events(session, get_settings(), [
                    NewEvent(str(uuid.uuid4()), "test.ping", None, None, utcnow(), {"n": number}) for number in range(3)
                ])
            worker = processes.start_worker(env, tmp_path / "logs")
            try:
                shop_client(redis_server.url).send_task("tracker.dispatch_outbox")
                wait_until(lambda: len(shop.posts) >= 1, timeout=30, what="a delivery under way")
                redis_server.stop()
                time.sleep(3)  # on purpose: the worker meets the lost connection with the task still running
                redis_server.start()
                # Back: the worker takes the next task.
                shop_client(redis_server.url).send_task("tracker.dispatch_outbox")
                wait_until(
                    lambda: worker.output().count("Task tracker.dispatch_outbox[") >= 4 or not worker.alive(),
                    timeout=60, what="the worker to take a task after the broker came back",
                )
                assert worker.alive(), worker.output()[-3000:]
                assert "Unrecoverable error" not in worker.output()
            finally:
                worker.stop()
                redis_server.stop()
