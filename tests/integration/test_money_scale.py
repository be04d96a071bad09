"""A charge with more places than the money column keeps is still "unchanged" when the
provider repeats it: the parser rounds it the way the database stores it, so the state
read back from the database equals the next identical answer (one event, not one per poll).

The order row goes through the ORM on both databases and back; the comparison is the
domain's own ``apply_observation``.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tracker.db.models import Order, Provider
from tracker.db.session import unit_of_work
from tracker.core.tracking import OrderState, apply_observation
from tracker.polling.orders import state_of
from tracker.apiv2 import parsing
from tracker.apiv2.types import OrderReport

pytestmark = pytest.mark.integration

START = datetime(2025, 1, 1, tzinfo=UTC)
_external_ids = itertools.count(1)


def _provider_id(url: str) -> int:
    with unit_of_work(url) as session:
        provider = session.query(Provider).filter_by(name="money").one_or_none()
        if provider is None:
            provider = Provider(
                name="money", api_url="http://127.0.0.1:9/api/v2", api_key_encrypted="unused",
                key_hint="****", created_at=START, updated_at=START,
            )
            session.add(provider)
            session.flush()
        return provider.id


def _answer(charge: Decimal) -> OrderReport:
    body = f'{{"status": "In progress", "charge": "{charge}", "remains": "10", "start_count": "5"}}'
    report = parsing.parse_status(body)
    assert isinstance(report, OrderReport)
    return report


def _stored_state(url: str, order_id: int) -> OrderState:
    """The state as the poller reads it back from the row."""
    with unit_of_work(url) as session:
        row = session.get(Order, order_id)
        assert row is not None
        return state_of(row)


def _write(url: str, order_id: int, state: OrderState) -> None:
    with unit_of_work(url) as session:
        row = session.get(Order, order_id)
        assert row is not None and state.status is not None
        row.status = state.status.value
        row.raw_status = state.raw_status
        row.remains = state.remains
        row.charge = state.charge
        row.start_count = state.start_count
        row.currency = state.currency
        row.last_observed_at = state.last_observed_at
        row.unchanged_polls = state.unchanged_polls


def _new_order(url: str, provider_id: int) -> int:
    with unit_of_work(url) as session:
        order = Order(
            provider_id=provider_id, external_id=next(_external_ids),
            next_poll_at=START, created_at=START, updated_at=START,
        )
        session.add(order)
        session.flush()
        return order.id


NASTY = st.decimals(
    min_value=Decimal("-99999999"), max_value=Decimal("99999999"),
    allow_nan=False, allow_infinity=False, places=None,
)


@settings(
    max_examples=12, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(charge=NASTY)
@example(charge=Decimal("0.000410922"))
@example(charge=Decimal("0.000000005"))
@example(charge=Decimal("12.3456789049999"))
def test_repeated_identical_answers_give_one_event(database_url: str, charge: Decimal) -> None:
    order_id = _new_order(database_url, _provider_id(database_url))
    events = 0
    for poll in range(4):
        outcome = apply_observation(
            _stored_state(database_url, order_id), _answer(charge),
            START + timedelta(seconds=poll), not_found_after=3,
        )
        events += outcome.transition is not None
        _write(database_url, order_id, outcome.state)
    assert events == 1
