"""Events to the shop: outbox rows written with each transition, delivered signed to a
real HTTP receiver, retried until it answers 2xx, and also sent as a shop-named task."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from tests.integration.helpers import add_provider, count_orders, print_figures, running_tracker, shop_client
from tests.support.processes import wait_until
from tracker.db.models import Order, OrderEvent, OutboxEvent
from tracker.db.session import unit_of_work
from tracker.sim.server import SimServer
from tracker.outbox.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

pytestmark = pytest.mark.integration

SECRET = "whsec-test-0c8d"


@dataclass
class Receiver:
    """The shop's webhook endpoint: records every delivery; fails the first ``fail_first``."""

    fail_first: int = 0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(fail_first=5)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                refuse = state.refused < state.fail_first
                if refuse:
                    state.refused += 1
                else:
                    state.received.append(({key: value for key, value in self.headers.items()}, body))
            self.send_response(503 if refuse else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/tracker"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.mark.slow  # about 19 s here (each database)
def test_every_transition_reaches_the_shop_signed_and_once_per_event(
    tracker_env: dict[str, str],
    broker_url: str,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = dict(
        tracker_env,
        TRACKER_WEBHOOK_URL=receiver.url,
        TRACKER_WEBHOOK_SECRET=SECRET,
        TRACKER_EVENT_TASK="shop.on_tracker_event",
    )
    with SimServer(dialect="standard", speed=40.0, seed=21) as sim:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=60, service=1)
        quantities = {order_id: sim.truth([order_id])[order_id]["quantity"] for order_id in ids}  # type: ignore[index]
        started = time.monotonic()
        with running_tracker(env, tmp_path / "logs"):
            shop = shop_client(broker_url)
            for order_id in ids:
                shop.send_task("tracker.track_orders", args=["panel", [order_id]], kwargs={"quantity": quantities[order_id]})
            wait_until(lambda: count_orders("panel", final=True) == len(ids), timeout=120, what="all final")

            def all_delivered() -> bool:
                with unit_of_work() as session:
                    return not session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.final.is_(False)))

            wait_until(all_delivered, timeout=60, what="every event delivered")
        elapsed = time.monotonic() - started

    with unit_of_work() as session:
        transitions = int(session.scalar(select(func.count()).select_from(OrderEvent)) or 0)
        outbox = session.scalars(select(OutboxEvent)).all()
        statuses = dict(session.execute(select(Order.external_id, Order.status)).all())
    assert len(outbox) == transitions
    assert all(row.delivered_at is not None and row.failed_at is None for row in outbox)
    assert max(row.attempts for row in outbox) > 1, "the receiver refused the first deliveries"

    delivered: dict[str, dict[str, object]] = {}
    for headers, body in receiver.received:
        assert verify_signature(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER], now=time.time())
        event = json.loads(body)
        assert headers[EVENT_ID_HEADER] == event["id"]
        delivered[event["id"]] = event
    assert set(delivered) == {row.event_id for row in outbox}

    finals = [event for event in delivered.values() if event["final"]]
    assert {event["order_id"] for event in finals} == set(ids)
    for event in finals:
        assert event["to_status"] == statuses[event["order_id"]]
        if event["to_status"] in ("Partial", "Canceled"):
            assert event["refund_fraction"] is not None
            assert event["quantity"] == quantities[event["order_id"]]

    # The shop-named task went to the shop's queue, which the tracker's workers never consume.
    queued = redis.Redis.from_url(broker_url).lrange("tracker-events", 0, -1)
    tasks = [json.loads(message) for message in queued]
    assert len(tasks) == len(outbox)
    assert {task["headers"]["task"] for task in tasks} == {"shop.on_tracker_event"}
    print_figures(
        "webhooks",
        {"orders": len(ids), "transitions": transitions, "events_delivered": len(delivered),
         "refused_first": receiver.refused, "seconds": round(elapsed, 1)},
    )


def test_alerts_low_balance_once_and_a_rejected_key(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from decimal import Decimal

    from tracker.core.clock import utcnow
    from tracker.config import get_settings, reset_settings
    from tracker.db.models import Provider
    from tests.integration.helpers import order_polls, poll_orders
    from tracker.providers.catalog import check_balances
    from tracker.providers.gateway import Gateway

    monkeypatch.setenv("TRACKER_WEBHOOK_URL", "http://127.0.0.1:9/unused")
    monkeypatch.setenv("TRACKER_WEBHOOK_SECRET", SECRET)
    reset_settings()
    gateway = Gateway(get_settings(), rate_limiter=None)
    with SimServer(dialect="standard", speed=1e-6, balance=Decimal("12.5")) as sim:
        add_provider("panel", sim.url, monkeypatch, "--balance-alert-below", "20")

        def alerts(kind: str) -> list[dict[str, object]]:
            with unit_of_work() as session:
                rows = session.scalars(select(OutboxEvent.payload).where(OutboxEvent.kind == kind)).all()
            return [json.loads(row) for row in rows]

        assert check_balances(get_settings(), gateway, utcnow()) == 1
        [low] = alerts("provider.balance_low")
        assert (low["balance"], low["threshold"], low["provider"]) == ("12.5", "20", "panel")
        with unit_of_work() as session:
            session.execute(Provider.__table__.update().values(balance_checked_at=None))
        assert check_balances(get_settings(), gateway, utcnow()) == 1
        assert len(alerts("provider.balance_low")) == 1, "still low: no second alert"

        with unit_of_work() as session:
            from tracker.orders.enqueue import track_orders

            track_orders(session, "panel", sim.seed_orders(count=3, service=1), now=utcnow())
        sim.set_config(api_key="rotated-by-the-panel")
        for batch in order_polls(get_settings(), utcnow()):
            poll_orders(batch.provider_id, batch.claim.claim_id, batch.claim.row_ids, settings=get_settings(), gateway=gateway)
        [paused] = alerts("provider.paused")
        assert "API key" in str(paused["message"])
    gateway.close()
