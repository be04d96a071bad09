"""One provider call is bounded: a total deadline and a cap on the answer's size.

The read timeout bounds each read, not the answer: a panel that trickles its answer a
byte at a time, or sends one that never ends, would hold a worker as long as it likes.
Against the sim over HTTP, each call must end with the right error well before the
panel would have finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.helpers import print_figures
from tracker.apiv2.client import ProviderClient
from tracker.apiv2.errors import AnswerTooLarge, ProviderError, ProviderTimeout
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

KEY = "sk-BOUNDED-3e4f5a"
DEADLINE_S = 1.5
READ_TIMEOUT_S = 0.5
MAX_BODY = 256 * 1024


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(api_key=KEY, seed=3, speed=1e-6) as server:
        yield server


@pytest.fixture
def client(sim: SimServer) -> Iterator[ProviderClient]:
    with ProviderClient(
        sim.url, KEY, timeout=(2.0, READ_TIMEOUT_S), retries=0, deadline=DEADLINE_S, max_body_bytes=MAX_BODY
    ) as c:
        yield c


def outcome(call: Callable[[], Any], patience: float) -> tuple[BaseException | None, float]:
    """Run the call; fail if it is still running after ``patience`` seconds."""
    box: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            box["error"] = error
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(patience)
    assert not thread.is_alive(), f"the call was still running after {patience} s"
    return box.get("error"), box["seconds"]


def test_a_trickling_answer_ends_at_the_deadline(sim: SimServer, client: ProviderClient) -> None:
    ids = sim.seed_orders(count=50, service=1)
    # Each byte comes well within the read timeout; the whole answer would take minutes.
    sim.inject_fault("trickle", count=1, actions=["status"], seconds=0.05)
    error, seconds = outcome(lambda: client.status_multi(ids), patience=DEADLINE_S + READ_TIMEOUT_S + 5)
    assert isinstance(error, ProviderTimeout), error
    assert "deadline" in str(error)
    print_figures("bounded call: trickle", {"deadline_s": DEADLINE_S, "ended_after_s": round(seconds, 2)})


def test_an_endless_answer_is_cut_at_the_size_cap(sim: SimServer, client: ProviderClient) -> None:
    ids = sim.seed_orders(count=5, service=1)
    sim.inject_fault("endless", count=1, actions=["status"], seconds=20)
    error, seconds = outcome(lambda: client.status_multi(ids), patience=10)
    assert isinstance(error, AnswerTooLarge), error
    print_figures("bounded call: endless", {"max_body_bytes": MAX_BODY, "ended_after_s": round(seconds, 2)})


def test_a_slow_answer_ends_at_the_read_timeout(sim: SimServer, client: ProviderClient) -> None:
    ids = sim.seed_orders(count=5, service=1)
    sim.inject_fault("slow", count=1, actions=["status"], seconds=10)
    error, _ = outcome(lambda: client.status_multi(ids), patience=READ_TIMEOUT_S + 5)
    assert isinstance(error, ProviderTimeout), error


def test_after_a_cut_answer_the_next_call_works(sim: SimServer, client: ProviderClient) -> None:
    ids = sim.seed_orders(count=5, service=1)
    sim.inject_fault("endless", count=1, actions=["status"], seconds=20)
    with pytest.raises(ProviderError):
        client.status_multi(ids)
    assert set(client.status_multi(ids)) == set(ids)


def test_no_read_waits_past_the_deadline(sim: SimServer) -> None:
    """A byte every 2 s, each within the 3 s read timeout: the read that starts 2 s in would
    wait until 4 s. The deadline (2.5 s) bounds that read too, so a try never takes longer
    than ``attempt_bound()``, which a task budgets against its soft time limit."""
    ids = sim.seed_orders(count=5, service=1)
    sim.inject_fault("trickle", count=1, actions=["status"], seconds=2.0)
    with ProviderClient(sim.url, KEY, timeout=(2.0, 3.0), retries=0, deadline=2.5) as client:
        assert client.attempt_bound() == 5.0
        error, seconds = outcome(lambda: client.status_multi(ids), patience=10)
    assert isinstance(error, ProviderTimeout), error
    assert "deadline" in str(error)
    assert seconds < 2.5 + 0.8, seconds
    print_figures("bounded call: slow last read", {"deadline_s": 2.5, "ended_after_s": round(seconds, 2)})
