"""Rules the schema itself enforces, on every database: the last guard when workers race."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from tracker.db.models import Order, Provider, RefillRequest
from tracker.db.session import unit_of_work

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _order(database_url: str) -> tuple[int, int]:
    with unit_of_work(database_url) as session:
        provider = Provider(
            name="panel", api_url="https://panel.example/api/v2", api_key_encrypted="x", key_hint="****",
            batch_size=100, rate_limit=5.0, refill_days=30, created_at=NOW, updated_at=NOW,
        )
        session.add(provider)
        session.flush()
        order = Order(provider_id=provider.id, external_id=1, next_poll_at=NOW, created_at=NOW, updated_at=NOW)
        session.add(order)
        session.flush()
        return provider.id, order.id


def _request(database_url: str, provider_id: int, order_id: int, *, final: bool) -> int:
    with unit_of_work(database_url) as session:
        request = RefillRequest(
            provider_id=provider_id, order_id=order_id, trigger="drop", state="gave_up" if final else "pending",
            final=final, attempts=0, next_attempt_at=None if final else NOW, created_at=NOW, updated_at=NOW,
        )
        session.add(request)
        session.flush()
        return request.id


def test_one_open_refill_request_per_order_any_number_ended(database_url: str) -> None:
    provider_id, order_id = _order(database_url)
    # Ended requests do not count, however many.
    _request(database_url, provider_id, order_id, final=True)
    _request(database_url, provider_id, order_id, final=True)
    first = _request(database_url, provider_id, order_id, final=False)
    with pytest.raises(IntegrityError):
        _request(database_url, provider_id, order_id, final=False)
    # Once the open one ends, a new one may open.
    with unit_of_work(database_url) as session:
        ended = session.get_one(RefillRequest, first)
        ended.final, ended.state = True, "gave_up"
    _request(database_url, provider_id, order_id, final=False)
