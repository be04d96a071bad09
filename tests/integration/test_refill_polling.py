"""Refill-status polling on a panel that only answers the single form.

The multi form's refusal is learned once; the task then stops, and the rows wait for the
next tick, which budgets one call per refill. Before, the same task went on with up to
100 single calls for a group the dispatcher had budgeted as one call.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import order_polls, poll_orders
from tracker.core.clock import utcnow
from tracker.config import get_settings
from tracker.db.models import Order, Provider, Refill
from tracker.db.session import unit_of_work
from tracker.polling.dispatch import PollWork, claim_all
from tracker.polling.engine import poll_batch
from tracker.polling.refills import REFILLS
from tracker.sim.server import SimServer
from tracker.orders.enqueue import track_orders
from tracker.providers.gateway import Gateway
from tracker.providers.registry import ProviderSpec, upsert_provider

pytestmark = pytest.mark.integration


@pytest.fixture
def singles(tracker_env: dict[str, str]) -> Iterator[tuple[SimServer, Gateway]]:
    with SimServer(dialect="singles", speed=1e-6, seed=13) as sim:
        gateway = Gateway(get_settings(), rate_limiter=None)
        yield sim, gateway
        gateway.close()


def test_learning_the_single_form_spends_one_call_and_gives_the_rows_back(singles: tuple[SimServer, Gateway]) -> None:
    sim, gateway = singles
    [order_id] = sim.seed_orders(count=1, service=1, pending_s=10**6)
    with unit_of_work() as session:
        upsert_provider(
            session, ProviderSpec(name="panel", url=sim.url, api_key=TEST_API_KEY, rate_limit=1000), get_settings(), utcnow()
        )
        track_orders(session, "panel", [order_id], now=utcnow())
    for work in order_polls(get_settings(), utcnow()):
        poll_orders(work.provider_id, work.claim.claim_id, work.claim.row_ids, settings=get_settings(), gateway=gateway)
    with unit_of_work() as session:
        order = session.scalars(select(Order)).one()
        # 150 refills the panel never heard of: each single answer is "Refill not found".
        for number in range(1, 151):
            session.add(
                Refill(provider_id=order.provider_id, order_id=order.id, external_id=str(900_000 + number),
                       final=False, next_poll_at=utcnow(), requested_at=utcnow(), updated_at=utcnow())
            )
    sim.reset_stats()
    [work] = [piece for piece in claim_all(get_settings(), utcnow()) if isinstance(piece, PollWork) and piece.kind == "refills"]
    assert len(work.claim.row_ids) == 150
    poll_batch(REFILLS, work.provider_id, work.claim.claim_id, work.claim.row_ids, settings=get_settings(), gateway=gateway)
    assert sim.stats()["actions"]["refill_status"]["calls"] == 1
    with unit_of_work() as session:
        assert session.scalar(select(Provider.supports_multi_refill_status)) is False
        refills = session.scalars(select(Refill)).all()
        assert all(refill.claim_id is None and refill.next_poll_at <= utcnow() for refill in refills)
    # The next tick budgets one call per refill.
    pieces = [piece for piece in claim_all(get_settings(), utcnow()) if isinstance(piece, PollWork) and piece.kind == "refills"]
    assert all(len(piece.claim.row_ids) <= get_settings().calls_per_poll_task for piece in pieces)
