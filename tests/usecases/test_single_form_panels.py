"""Panels that know only the single forms, ``order=`` and ``refill=``.

The MSM "SMM Script" family of PHP panels (sold as OwnSMMPanel and under many other
names) reads ``$_POST["order"]`` and ``$_POST["refill"]`` alone: asked
``orders=101,102``, it looks up no order and answers ``{"error": "Order not found."}``,
and asked ``orders=101`` it says the same of an order it has; asked ``refills=1,2``, it
answers ``{"error": "Refill not found"}``. Tried against such a panel, the tracker got no
status at all (every batch call failed, the circuit opened), an order tracked alone
ended ``Not found`` after K polls while the panel was delivering it, and its refills were
never polled (each call given back as a refusal).
"""

from __future__ import annotations

from sqlalchemy import select

from tests.usecases.helpers import add_provider, completed_with_refill, poll_due, tick, track
from tracker.config import Settings
from tracker.db.models import Order, Provider, Refill
from tracker.providers.catalog import sync_catalog
from tracker.providers.gateway import Gateway, ProviderAccess
from tracker.refills.drops import report_drop
from tracker.testing import InMemoryCallMetrics, MemoryDatabase, Scripted, ScriptedPanel, SettableClock

ORDER_IDS = [101, 102, 103]


def statuses(db: MemoryDatabase) -> dict[int, str | None]:
    with db.unit_of_work(read_only=True) as session:
        return dict(session.execute(select(Order.external_id, Order.status)).all())


def multi_status_fact(db: MemoryDatabase, provider_id: int) -> bool | None:
    with db.unit_of_work(read_only=True) as session:
        return session.scalar(select(Provider.supports_multi_status).where(Provider.id == provider_id))


def status_forms(panel: ScriptedPanel) -> list[str]:
    """The form of each status call: "orders" (the batch) or "order" (one ID)."""
    return ["orders" if "orders" in call.form else "order" for call in panel.calls if call.action == "status"]


def sweep(db: MemoryDatabase, settings: Settings, gateway: Gateway, clock: SettableClock, times: int) -> None:
    for _ in range(times):
        poll_due(db, settings, gateway, clock)
        clock.advance(settings.poll_interval * settings.max_poll_backoff_factor * 2)


def test_a_panel_without_the_batch_form_is_asked_one_order_at_a_time(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int, metrics: InMemoryCallMetrics,
) -> None:
    panel.multi_forms = False
    track(db, clock, ORDER_IDS)
    for order_id in ORDER_IDS:
        panel.set_order(order_id, "In progress", remains=60, start_count=40)

    sweep(db, settings, gateway, clock, times=3)

    assert statuses(db) == {order_id: "In progress" for order_id in ORDER_IDS}
    assert multi_status_fact(db, provider_id) is False
    # The batch form was tried once; in each later sweep, one order= call per order.
    assert status_forms(panel) == ["orders"] + ["order"] * len(ORDER_IDS) * 2
    # The one refused batch is not held against the provider.
    with db.unit_of_work(read_only=True) as session:
        assert session.scalar(select(Provider.consecutive_failures).where(Provider.id == provider_id)) == 0


def test_an_order_tracked_alone_is_asked_with_the_single_form_and_never_ends_not_found(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int,
) -> None:
    panel.multi_forms = False
    track(db, clock, [101])
    panel.set_order(101, "In progress", remains=60, start_count=40)

    sweep(db, settings, gateway, clock, times=settings.not_found_after + 1)

    assert statuses(db) == {101: "In progress"}
    assert set(status_forms(panel)) == {"order"}


def test_a_panel_that_answered_batches_keeps_the_batch_form_after_one_odd_answer(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int,
) -> None:
    track(db, clock, ORDER_IDS)
    for order_id in ORDER_IDS:
        panel.set_order(order_id, "In progress", remains=60, start_count=40)
    sweep(db, settings, gateway, clock, times=1)
    assert multi_status_fact(db, provider_id) is True

    # A batch form proven to work: a whole-batch "not found" is the provider failing.
    panel.script(Scripted(200, b'{"error": "Order not found."}'))
    [summary] = poll_due(db, settings, gateway, clock)
    assert summary.error is not None
    assert multi_status_fact(db, provider_id) is True
    clock.advance(settings.poll_interval * 100)
    sweep(db, settings, gateway, clock, times=1)
    assert set(status_forms(panel)) == {"orders"}
    assert statuses(db) == {order_id: "In progress" for order_id in ORDER_IDS}


def refill_statuses(db: MemoryDatabase) -> dict[str, str | None]:
    with db.unit_of_work(read_only=True) as session:
        return dict(session.execute(select(Refill.external_id, Refill.status)).all())


def refill_status_forms(panel: ScriptedPanel) -> list[str]:
    return ["refills" if "refills" in call.form else "refill" for call in panel.calls if call.action == "refill_status"]


def dropped_and_refilled(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int, order_ids: list[int],
) -> None:
    """Completed orders of services with refill, each reported dropped, their refills
    requested and accepted by the panel (Pending there)."""
    for offset, order_id in enumerate(order_ids):
        completed_with_refill(db, settings, gateway, panel, clock, provider_id, order_id, service_id=70 + offset)
    for order_id in order_ids:
        with db.unit_of_work() as session:
            report_drop(session, "panel", order_id, settings=settings, now=clock())
    tick(db, settings, gateway, clock)
    assert sorted(panel.refills_made) == sorted(order_ids)


def test_refills_on_a_panel_without_the_batch_form_are_followed_to_their_end(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int,
) -> None:
    panel.multi_forms = False
    dropped_and_refilled(db, settings, gateway, panel, clock, provider_id, [201, 202])
    for _ in range(3):
        clock.advance(settings.poll_interval * settings.max_poll_backoff_factor * 2)
        tick(db, settings, gateway, clock)
    assert refill_statuses(db) == {"1": "Pending", "2": "Pending"}

    panel.refill_states.update({"1": "Completed", "2": "Completed"})
    clock.advance(settings.poll_interval * settings.max_poll_backoff_factor * 2)
    tick(db, settings, gateway, clock)
    assert refill_statuses(db) == {"1": "Completed", "2": "Completed"}
    with db.unit_of_work(read_only=True) as session:
        assert session.scalar(select(Provider.supports_multi_refill_status)) is False
    forms = refill_status_forms(panel)
    assert forms.count("refills") == 1 and set(forms[forms.index("refills") + 1 :]) == {"refill"}


def test_a_refill_alone_is_asked_with_the_single_form(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int,
) -> None:
    panel.multi_forms = False
    dropped_and_refilled(db, settings, gateway, panel, clock, provider_id, [201])
    clock.advance(settings.poll_interval * settings.max_poll_backoff_factor * 2)
    tick(db, settings, gateway, clock)
    assert refill_statuses(db) == {"1": "Pending"}
    assert set(refill_status_forms(panel)) == {"refill"}


def test_a_new_url_forgets_the_forms_learned_from_the_old_panel(
    db: MemoryDatabase, settings: Settings, clock: SettableClock, provider_id: int,
) -> None:
    with db.unit_of_work() as session:
        provider = session.get_one(Provider, provider_id)
        provider.supports_multi_status = provider.supports_multi_refill_status = False
    add_provider(db, settings, clock)  # the same URL again (a new key, say): kept
    assert multi_status_fact(db, provider_id) is False
    add_provider(db, settings, clock, url="https://other-panel.test/api/v2")
    with db.unit_of_work(read_only=True) as session:
        provider = session.get_one(Provider, provider_id)
        assert (provider.supports_multi_status, provider.supports_multi_refill_status) == (None, None)


def test_a_catalog_sync_gives_the_batch_form_another_chance(
    db: MemoryDatabase, settings: Settings, gateway: Gateway, panel: ScriptedPanel,
    clock: SettableClock, provider_id: int,
) -> None:
    """One refused batch, before any worked, moves a panel to single calls: 100 calls a
    sweep instead of one, for good, were that refusal a passing glitch of a panel that
    reads batches. The daily catalog sync (or `tracker provider sync`) forgets the
    verdict, so the batch form is tried once more: a single-form panel pays one refused
    call a day, a batch panel gets its batches back."""
    panel.multi_forms = False
    track(db, clock, ORDER_IDS)
    for order_id in ORDER_IDS:
        panel.set_order(order_id, "In progress", remains=60, start_count=40)
    sweep(db, settings, gateway, clock, times=1)
    assert multi_status_fact(db, provider_id) is False

    panel.multi_forms = True  # it was a glitch
    with db.unit_of_work(read_only=True) as session:
        access = ProviderAccess.of(session.get_one(Provider, provider_id), settings)
    sync_catalog(access, settings, gateway, clock(), unit_of_work=db.unit_of_work)
    assert multi_status_fact(db, provider_id) is None
    panel.calls.clear()
    sweep(db, settings, gateway, clock, times=2)
    assert status_forms(panel) == ["orders", "orders"]
    assert multi_status_fact(db, provider_id) is True
