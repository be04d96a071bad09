from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tracker.core.outbox_events import order_transition, refund_share
from tracker.core.status import OrderStatus
from tracker.core.tracking import Transition
from tracker.outbox.webhooks import sign, verify_signature

NOW = 1_800_000_000


@pytest.mark.parametrize(
    ("status", "charge", "remains", "quantity", "due", "fraction"),
    [
        (OrderStatus.PARTIAL, "0.27819", 157, 1000, "0.04367583", "0.157"),
        (OrderStatus.CANCELED, "2.5", 1000, 1000, "2.5", "1"),
        (OrderStatus.PARTIAL, "1", 1, 3, "0.33333333", "0.3333333333333333333333333333"),
        (OrderStatus.PARTIAL, "1.2", -2, 100, "0", "0"),
        (OrderStatus.PARTIAL, None, 50, 100, None, "0.5"),
        (OrderStatus.PARTIAL, "1", 50, None, None, None),
        (OrderStatus.COMPLETED, "1", 0, 100, None, None),
    ],
)
def test_refund_share_is_exact(
    status: OrderStatus, charge: str | None, remains: int, quantity: int | None, due: str | None, fraction: str | None
) -> None:
    got_due, got_fraction = refund_share(status, Decimal(charge) if charge else None, remains, quantity)
    assert (format(got_due, "f") if got_due is not None else None) == due
    assert (format(got_fraction, "f") if got_fraction is not None else None) == fraction


def test_order_event_payload_is_plain_json_with_a_stable_id() -> None:
    transition = Transition(OrderStatus.IN_PROGRESS, OrderStatus.PARTIAL, "Partial", 157, Decimal("0.27819"), 3572)
    event = order_transition(
        provider_id=1, provider_name="panel", order_row_id=9, external_id=1001, service_id=3,
        quantity=1000, currency="USD", transition=transition, at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    payload = json.loads(json.dumps(event.payload))
    assert payload["id"] == event.event_id
    assert payload["type"] == "order.status_changed"
    assert (payload["from_status"], payload["to_status"], payload["charge"]) == ("In progress", "Partial", "0.27819")
    assert (payload["refund_due"], payload["refund_fraction"], payload["final"]) == ("0.04367583", "0.157", True)


def test_signature_round_trip_and_tampering() -> None:
    body = b'{"id":"e1","type":"order.status_changed"}'
    signature = sign("s3cret", NOW, body)
    assert signature.startswith("sha256=")
    assert verify_signature("s3cret", str(NOW), body, signature, now=NOW + 10)
    assert not verify_signature("s3cret", str(NOW), body + b" ", signature, now=NOW)
    assert not verify_signature("other", str(NOW), body, signature, now=NOW)
    assert not verify_signature("s3cret", str(NOW + 1), body, signature, now=NOW)
    assert not verify_signature("s3cret", str(NOW), body, signature, now=NOW + 301)
    assert not verify_signature("s3cret", "not-a-number", body, signature, now=NOW)
