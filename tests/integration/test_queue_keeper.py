"""The worker's queue keeper finds a flushed Redis's lost bindings without declaring
anything while they are there (real Redis, kombu's own declarations)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from tracker.worker.queues import CONTROL_QUEUE, POLLS_QUEUE, queue_config
from tracker.worker.signals import binding_keys, bindings_missing, redeclare_queues

pytestmark = pytest.mark.integration


@pytest.fixture
def worker_app(broker_url: str) -> Iterator[Celery]:
    app = Celery("queue-keeper-test", broker=broker_url, set_as_current=False)
    app.conf.update(queue_config())
    app.amqp.queues.select([CONTROL_QUEUE, POLLS_QUEUE])
    yield app
    app.close()


@pytest.fixture
def client(broker_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(broker_url)
    yield connection
    connection.close()


def test_bindings_are_missing_after_a_flush_and_back_once_redeclared(worker_app: Celery, client: redis.Redis) -> None:
    assert bindings_missing(client, worker_app)
    redeclare_queues(worker_app)
    # The keys are the ones kombu itself wrote, not a guess at its naming.
    assert sorted(key.decode() for key in client.keys("_kombu.binding.*")) == binding_keys(worker_app)
    assert not bindings_missing(client, worker_app)
    client.flushdb()
    assert bindings_missing(client, worker_app)
    redeclare_queues(worker_app)
    assert not bindings_missing(client, worker_app)


def test_one_lost_binding_of_two_is_missed(worker_app: Celery, client: redis.Redis) -> None:
    redeclare_queues(worker_app)
    client.delete(binding_keys(worker_app)[1])
    assert bindings_missing(client, worker_app)


def test_a_global_key_prefix_is_part_of_the_keys(worker_app: Celery, client: redis.Redis) -> None:
    worker_app.conf.broker_transport_options = {"global_keyprefix": "shop1:"}
    redeclare_queues(worker_app)
    assert sorted(key.decode() for key in client.keys("*_kombu.binding.*")) == binding_keys(worker_app)
    assert all(key.startswith("shop1:") for key in binding_keys(worker_app))
    assert not bindings_missing(client, worker_app)
