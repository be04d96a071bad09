"""The real ``ProviderClient`` against the real simulated provider, over real HTTP.

Every action in every dialect the sim speaks, checked against the sim's own truth (not
against hard-coded answers), and every fault kind the sim injects: the exception class,
how many times the request reached the sim (retries for read-only actions, exactly one
send for ``add``/``refill``/``cancel``), whether it was executed anyway, and that the API
key never shows in the error.

The sim clock runs at a crawl (``FROZEN_SPEED``) and tests move it with ``advance``, so
an order's state cannot change between reading the truth and asking the client.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from tracker.core.status import OrderStatus, RefillStatus
from tracker.apiv2.client import CallRecord, ProviderClient
from tracker.apiv2.errors import (
    AnswerTooLarge,
    HTTPError,
    IncorrectRequest,
    InsufficientFunds,
    InvalidKey,
    NotJSON,
    ProviderError,
    ProviderRefused,
    ProviderTimeout,
    RateLimited,
    TransportError,
)
from tracker.apiv2.messages import RefillRefusal, classify_refill_refusal
from tracker.apiv2.types import (
    CancelAccepted,
    ItemError,
    OrderReport,
    OrderResult,
    RefillReport,
    RefillResult,
)
from tracker.sim import SimServer
from tracker.sim.catalog import (
    DEFAULT_CATALOG,
    SERVICE_FOLLOWERS_REFILL_CANCEL,
    SERVICE_LIKES_PLAIN,
)
from tracker.sim.dialects import DIALECTS
from tracker.sim.faults import FaultKind
from tracker.sim.model import charge_for

pytestmark = pytest.mark.integration

KEY = "sk-CLIENTSIM-7d1e2f"
WRONG_KEY = "sk-CLIENTSIM-WRONG-5c4b3a"
# Sim seconds per real second: slow enough that nothing moves unless a test advances it.
FROZEN_SPEED = 1e-6
REFILL_PENDING_S = 30.0
REFILL_PROGRESS_S = 60.0
CANCEL_DELAY_S = 10.0
LINK = "https://example.com/client-sim"
# Far above any ID the sim hands out in this module.
UNKNOWN_ORDER = 9_000_000
UNKNOWN_REFILL = "8000000"

FOLLOWERS = SERVICE_FOLLOWERS_REFILL_CANCEL  # refill and cancel
LIKES = SERVICE_LIKES_PLAIN  # neither refill nor cancel
SPECS = {spec.service_id: spec for spec in DEFAULT_CATALOG}
COMMENTS_SERVICES = [spec.service_id for spec in DEFAULT_CATALOG if spec.takes_comments]

RETRIES = 2  # the client's, for the read-only actions
READ_TIMEOUT_S = 0.25
SLOW_S = 0.6


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with SimServer(
        api_key=KEY,
        seed=11,
        speed=FROZEN_SPEED,
        refill_pending_s=REFILL_PENDING_S,
        refill_progress_s=REFILL_PROGRESS_S,
        cancel_delay_s=CANCEL_DELAY_S,
    ) as sim:
        yield sim


@pytest.fixture
def sim(server: SimServer) -> SimServer:
    """The module's sim with no orders, faults or counters left from the previous test."""
    server.reset()
    return server


@pytest.fixture
def client(sim: SimServer) -> Iterator[ProviderClient]:
    with ProviderClient(sim.url, KEY, timeout=(2.0, 5.0), retries=RETRIES, retry_backoff=0.01) as c:
        yield c


@pytest.fixture
def impatient_client(sim: SimServer) -> Iterator[ProviderClient]:
    """Short read timeout, for the slow and hold faults."""
    with ProviderClient(
        sim.url, KEY, timeout=(2.0, READ_TIMEOUT_S), retries=RETRIES, retry_backoff=0.01
    ) as c:
        yield c


# --- helpers -------------------------------------------------------------------------


def assert_key_free(error: BaseException, key: str = KEY) -> None:
    """Neither the error nor anything chained to it mentions the key."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        texts = [str(current), repr(current), *(repr(arg) for arg in current.args)]
        texts += [repr(value) for value in getattr(current, "__dict__", {}).values()]
        for text in texts:
            assert key not in text, f"{type(current).__name__} leaks the key: {text[:200]}"
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]


def expected_report(truth: dict[str, Any]) -> OrderReport:
    """What a correct client must make of the sim's answer, built from the sim's truth."""
    return OrderReport(
        status=OrderStatus(truth["status"]),
        raw_status=truth["raw_status"],
        charge=Decimal(truth["charge"]),
        start_count=truth["start_count"],
        remains=truth["remains"],
        currency=truth["currency"],
    )


def expected_refill(truth: dict[str, Any]) -> RefillReport:
    return RefillReport(status=RefillStatus(truth["status"]), raw_status=truth["raw_status"])


def one(items: list[int]) -> int:
    assert len(items) == 1
    return items[0]


def completed_with_drop(sim: SimServer, dropped: int = 7, service: int = FOLLOWERS) -> int:
    """An order that completed long ago and then lost ``dropped`` (0: lost nothing)."""
    order = one(
        sim.seed_orders(
            1, service=service, quantity=500, outcome="Completed", age_s=3000, natural_drop=False
        )
    )
    if dropped:
        sim.drop(order, dropped)
    return order


def pending_order(sim: SimServer, service: int = FOLLOWERS) -> int:
    return one(sim.seed_orders(1, service=service, pending_s=1000, outcome="Completed"))


def refills_made(sim: SimServer) -> int:
    return int(sim.stats()["refills"])


def orders_made(sim: SimServer) -> int:
    return int(sim.stats()["orders"])


def calls(sim: SimServer, action: str) -> int:
    return int(sim.stats()["actions"].get(action, {}).get("calls", 0))


def wait_until(condition: Callable[[], bool], limit_s: float = 3.0) -> bool:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- every action, every dialect -----------------------------------------------------


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
class TestEveryDialect:
    @pytest.fixture(autouse=True)
    def _speak(self, sim: SimServer, dialect: str) -> None:
        sim.set_config(dialect=dialect)

    def test_services_match_the_catalog(self, client: ProviderClient, dialect: str) -> None:
        rendering = DIALECTS[dialect]
        services = {service.service_id: service for service in client.services()}
        assert set(services) == set(SPECS)
        for service_id, spec in SPECS.items():
            got = services[service_id]
            assert (got.name, got.type, got.category) == (spec.name, spec.type, spec.category)
            assert (got.rate, got.min, got.max) == (spec.rate, spec.min, spec.max)
            assert isinstance(got.rate, Decimal)
            assert got.refill is spec.refill
            assert got.cancel is (spec.cancel if rendering.service_cancel_field else None)
            assert got.description == (spec.desc if rendering.service_desc_field else None)
        flags = {(s.refill, s.cancel) for s in services.values()}
        assert len({refill for refill, _ in flags}) == 2  # both kinds are in the catalog

    def test_balance_is_a_decimal_with_currency(
        self, sim: SimServer, client: ProviderClient
    ) -> None:
        balance = client.balance()
        assert isinstance(balance.amount, Decimal)
        assert balance.amount == sim.provider.balance
        assert balance.currency == sim.provider.currency
        sim.set_config(balance="12.34567")
        assert client.balance().amount == Decimal("12.34567")

    def test_add_default_order(self, sim: SimServer, client: ProviderClient) -> None:
        before = client.balance().amount
        order = client.add(LIKES, LINK, 250)
        truth = sim.truth([order])[order]
        assert truth is not None
        assert (truth["service"], truth["link"], truth["quantity"]) == (LIKES, LINK, 250)
        assert client.balance().amount == before - charge_for(SPECS[LIKES].rate, 250)
        assert client.add(LIKES, LINK, 250) > order

    def test_add_with_runs_and_interval(self, sim: SimServer, client: ProviderClient) -> None:
        order = client.add(LIKES, LINK, 100, runs=3, interval=15)
        truth = sim.truth([order])[order]
        assert truth is not None
        assert truth["quantity"] == 300  # the sim books runs * quantity

    def test_add_custom_comments(self, sim: SimServer, client: ProviderClient) -> None:
        assert COMMENTS_SERVICES, "the sim's catalog has a Custom Comments service"
        service = COMMENTS_SERVICES[0]
        listed = {s.service_id: s for s in client.services()}
        assert listed[service].type == "Custom Comments"
        comments = [f"great post #{number}" for number in range(SPECS[service].min + 2)]
        order = client.add(service, LINK, comments=comments)
        truth = sim.truth([order])[order]
        assert truth is not None
        assert truth["quantity"] == len(comments)  # one comment per line reached the sim

    def test_add_refusals_are_typed(self, sim: SimServer, client: ProviderClient) -> None:
        with pytest.raises(ProviderRefused) as unknown:
            client.add(999, LINK, 100)
        assert "service" in unknown.value.provider_message.lower()
        sim.set_config(balance="0.01")
        with pytest.raises(InsufficientFunds):
            client.add(LIKES, LINK, 1000)
        assert orders_made(sim) == 0

    def test_status_single_and_multi_equal_the_truth(
        self, sim: SimServer, client: ProviderClient
    ) -> None:
        ids = [
            *sim.seed_orders(4, service=FOLLOWERS, pending_s=100),
            *sim.seed_orders(4, service=FOLLOWERS, age_s=50, pending_s=10, progress_s=200),
            *sim.seed_orders(4, service=FOLLOWERS, age_s=3000, outcome="Completed"),
            *sim.seed_orders(4, service=FOLLOWERS, age_s=3000, outcome="Partial"),
            *sim.seed_orders(4, service=FOLLOWERS, age_s=3000, outcome="Canceled"),
            *sim.seed_orders(30, service=LIKES, age_s=3000),  # the sim's own mix
        ]
        truths = sim.truth(ids)
        expected = {}
        for order_id in ids:
            truth = truths[order_id]
            assert truth is not None
            expected[order_id] = expected_report(truth)
        statuses = {report.status for report in expected.values()}
        assert statuses >= {
            OrderStatus.PENDING,
            OrderStatus.IN_PROGRESS,
            OrderStatus.COMPLETED,
            OrderStatus.PARTIAL,
            OrderStatus.CANCELED,
        }

        multi = client.status_multi(ids)
        assert multi == expected

        one_per_status = {report.status: order_id for order_id, report in expected.items()}
        for order_id in one_per_status.values():
            assert client.status(order_id) == expected[order_id]

    def test_status_multi_of_250_ids_is_three_calls(
        self, sim: SimServer, client: ProviderClient
    ) -> None:
        ids = sim.seed_orders(250, service=LIKES, age_s=3000)
        sim.reset_stats()
        answers = client.status_multi(ids + ids[:20])  # repeats are asked once
        assert set(answers) == set(ids)
        assert all(isinstance(answer, OrderReport) for answer in answers.values())
        counters = sim.stats()["actions"]["status"]
        assert counters["calls"] == 3
        assert counters["max_ids"] == 100
        assert counters["ids_total"] == 250
        assert counters["rejected_over_100"] == 0

    def test_unknown_order_is_an_item_error(self, sim: SimServer, client: ProviderClient) -> None:
        known = one(sim.seed_orders(1, age_s=3000))
        single = client.status(UNKNOWN_ORDER)
        assert isinstance(single, ItemError)
        assert single.means_not_found
        multi = client.status_multi([known, UNKNOWN_ORDER])
        assert isinstance(multi[known], OrderReport)
        missing = multi[UNKNOWN_ORDER]
        assert isinstance(missing, ItemError)
        assert missing.means_not_found

    def test_refill_after_completion_and_drop(self, sim: SimServer, client: ProviderClient) -> None:
        order = one(
            sim.seed_orders(
                1,
                service=FOLLOWERS,
                quantity=400,
                outcome="Completed",
                pending_s=1,
                progress_s=2,
                natural_drop=False,
            )
        )
        with pytest.raises(ProviderRefused) as early:
            client.refill(order)
        assert classify_refill_refusal(early.value.provider_message) is RefillRefusal.RETRY_LATER
        assert refills_made(sim) == 0

        sim.advance(5)
        completed = client.status(order)
        assert isinstance(completed, OrderReport)
        assert completed.status is OrderStatus.COMPLETED
        sim.drop(order, 9)

        refill_id = client.refill(order)
        assert isinstance(refill_id, str)
        truth = sim.refill_truth([int(refill_id)])[int(refill_id)]
        assert truth is not None
        assert (truth["order"], truth["restore"]) == (order, 9)

        with pytest.raises(ProviderRefused) as active:
            client.refill(order)
        refusal = classify_refill_refusal(active.value.provider_message)
        assert refusal is RefillRefusal.ALREADY_ACTIVE

    def test_refill_refusals(self, sim: SimServer, client: ProviderClient) -> None:
        no_refill = completed_with_drop(sim, service=LIKES)
        with pytest.raises(ProviderRefused) as disabled:
            client.refill(no_refill)
        assert classify_refill_refusal(disabled.value.provider_message) is RefillRefusal.DISABLED
        with pytest.raises(ProviderRefused) as unknown:
            client.refill(UNKNOWN_ORDER)
        assert classify_refill_refusal(unknown.value.provider_message) is RefillRefusal.NOT_FOUND
        assert refills_made(sim) == 0

    def test_refill_status_single_and_multi(
        self, sim: SimServer, client: ProviderClient, dialect: str
    ) -> None:
        restoring = client.refill(completed_with_drop(sim, dropped=5))
        nothing_missing = client.refill(completed_with_drop(sim, dropped=0))
        refills = [restoring, nothing_missing]

        def truths() -> dict[str, RefillResult]:
            found = sim.refill_truth([int(refill) for refill in refills])
            result: dict[str, RefillResult] = {}
            for refill in refills:
                truth = found[int(refill)]
                assert truth is not None
                result[refill] = expected_refill(truth)
            return result

        seen: set[RefillStatus] = set()
        for step in (0.0, REFILL_PENDING_S + 1, REFILL_PROGRESS_S + 1):
            sim.advance(step)
            expected = truths()
            seen.update(
                report.status for report in expected.values() if isinstance(report, RefillReport)
            )
            for refill in refills:
                assert client.refill_status(refill) == expected[refill]
            if DIALECTS[dialect].multi_refill_status:
                assert client.refill_status_multi(refills) == expected
        assert seen == {
            RefillStatus.PENDING,
            RefillStatus.IN_PROGRESS,
            RefillStatus.COMPLETED,
            RefillStatus.REJECTED,
        }

        unknown = client.refill_status(UNKNOWN_REFILL)
        assert isinstance(unknown, ItemError) and unknown.means_not_found
        if DIALECTS[dialect].multi_refill_status:
            multi = client.refill_status_multi([restoring, UNKNOWN_REFILL])
            assert isinstance(multi[restoring], RefillReport)
            missing = multi[UNKNOWN_REFILL]
            assert isinstance(missing, ItemError) and missing.means_not_found
        else:
            with pytest.raises(IncorrectRequest):
                client.refill_status_multi(refills)

    def test_cancel(self, sim: SimServer, client: ProviderClient, dialect: str) -> None:
        cancellable = pending_order(sim, FOLLOWERS)
        not_cancellable = pending_order(sim, LIKES)
        finished = completed_with_drop(sim, dropped=0)
        ids = [cancellable, not_cancellable, finished, UNKNOWN_ORDER]
        flags = {service.service_id: service.cancel for service in client.services()}

        if not DIALECTS[dialect].cancel_supported:
            with pytest.raises(IncorrectRequest):
                client.cancel(ids)
            truth = sim.truth([cancellable])[cancellable]
            assert truth is not None and truth["cancel"] is None
            return

        assert flags[FOLLOWERS] is True and flags[LIKES] is False
        answers = client.cancel(ids)
        assert set(answers) == set(ids)
        assert isinstance(answers[cancellable], CancelAccepted)
        for refused in (not_cancellable, finished):
            answer = answers[refused]
            assert isinstance(answer, ItemError) and not answer.means_not_found
        missing = answers[UNKNOWN_ORDER]
        assert isinstance(missing, ItemError) and missing.means_not_found
        cancel_requests = {
            order: (truth or {}).get("cancel")
            for order, truth in sim.truth([cancellable, not_cancellable]).items()
        }
        assert cancel_requests[cancellable] is not None
        assert cancel_requests[not_cancellable] is None

        again = client.cancel([cancellable])[cancellable]
        assert isinstance(again, ItemError)

        sim.advance(CANCEL_DELAY_S + 1)
        report = client.status(cancellable)
        truth = sim.truth([cancellable])[cancellable]
        assert truth is not None
        assert isinstance(report, OrderReport) and report == expected_report(truth)
        assert report.status is OrderStatus.CANCELED


def test_one_id_multi_status_answered_in_the_single_form(
    sim: SimServer, client: ProviderClient
) -> None:
    """Some panels answer ``orders=<one id>`` like ``order=``: an unknown order is then a
    top-level "Incorrect order ID", which is that order's not-found, not a failed call."""
    sim.set_config(single_id_orders_as_order=True)
    known = one(sim.seed_orders(1, age_s=3000))
    missing = client.status_multi([UNKNOWN_ORDER])
    assert set(missing) == {UNKNOWN_ORDER}
    answer = missing[UNKNOWN_ORDER]
    assert isinstance(answer, ItemError) and answer.means_not_found
    truth = sim.truth([known])[known]
    assert truth is not None
    assert client.status_multi([known]) == {known: expected_report(truth)}
    # Several IDs are still a batch answer.
    both = client.status_multi([known, UNKNOWN_ORDER])
    assert both[known] == expected_report(truth)
    assert isinstance(both[UNKNOWN_ORDER], ItemError) and both[UNKNOWN_ORDER].means_not_found
    assert calls(sim, "status") == 3


def test_wrong_key_is_invalid_key_without_the_key(sim: SimServer) -> None:
    wrong = ProviderClient(sim.url, WRONG_KEY, retries=RETRIES, retry_backoff=0.01)
    with wrong, pytest.raises(InvalidKey) as caught:
        wrong.balance()
    assert sim.stats()["rejected_invalid_key"] == 1
    assert calls(sim, "balance") == 1  # a bad key is not worth retrying
    assert_key_free(caught.value, WRONG_KEY)


# --- every fault kind ----------------------------------------------------------------


@dataclass(frozen=True)
class FaultCase:
    error: type[ProviderError]
    # A retryable failure: the read-only actions are sent 1 + RETRIES times.
    retried: bool
    # The sim executes the request despite the failure (the client cannot know).
    executed: bool
    status_code: int | None = None
    seconds: float | None = None


FAULT_CASES: dict[str, FaultCase] = {
    "http_500": FaultCase(HTTPError, retried=True, executed=False, status_code=500),
    "http_502": FaultCase(HTTPError, retried=True, executed=False, status_code=502),
    "html": FaultCase(HTTPError, retried=True, executed=False, status_code=503),
    "html_200": FaultCase(NotJSON, retried=False, executed=False),
    "broken_json": FaultCase(NotJSON, retried=False, executed=True),
    "php_fatal": FaultCase(NotJSON, retried=False, executed=True),
    "slow": FaultCase(ProviderTimeout, retried=True, executed=True, seconds=SLOW_S),
    "rate_limit": FaultCase(RateLimited, retried=False, executed=False, status_code=429, seconds=7),
    "invalid_key": FaultCase(InvalidKey, retried=False, executed=False),
    "drop_connection": FaultCase(TransportError, retried=True, executed=False),
    "act_then_drop": FaultCase(TransportError, retried=True, executed=True),
    "act_then_hang": FaultCase(ProviderTimeout, retried=True, executed=True, seconds=SLOW_S),
    "trickle": FaultCase(ProviderTimeout, retried=True, executed=True, seconds=SLOW_S),
    "endless": FaultCase(AnswerTooLarge, retried=False, executed=False, seconds=5),
    "hold": FaultCase(ProviderTimeout, retried=True, executed=True),
}


# PHP warnings, notices and deprecations before the JSON: the answer is salvaged, not a failure.
NOISE_KINDS: dict[str, str] = {
    "php_warning": "warning",
    "php_deprecated": "deprecated",
    "php_notice": "notice",
    "php_notice_text": "notice",
    "codeigniter_notice": "notice",
    "codeigniter_warning": "warning",
    "laravel_deprecation": "deprecated",
}


def test_every_fault_kind_is_covered() -> None:
    assert not set(FAULT_CASES) & set(NOISE_KINDS)
    assert set(FAULT_CASES) | set(NOISE_KINDS) == {kind.value for kind in FaultKind}


@pytest.mark.parametrize("action", ["status", "status_multi", "add", "refill"])
@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_before_the_json_is_salvaged(sim: SimServer, kind: str, action: str) -> None:
    """The answer is used, the call is not retried, it is no failure, and the client's
    call record gives the worst severity salvaged (for ``tracker stats``)."""
    records: list[CallRecord] = []
    client = ProviderClient(
        sim.url, KEY, timeout=(2.0, 5.0), retries=RETRIES, retry_backoff=0.01,
        after_call=records.append,
    )
    order = completed_with_drop(sim)
    wire_action = "status" if action == "status_multi" else action
    sim.reset_stats()
    sim.inject_fault(kind, actions=[wire_action])
    with client:
        if action == "status":
            truth = sim.truth([order])[order]
            assert truth is not None and client.status(order) == expected_report(truth)
        elif action == "status_multi":
            truth = sim.truth([order])[order]
            assert truth is not None
            assert client.status_multi([order, UNKNOWN_ORDER]) == {
                order: expected_report(truth),
                UNKNOWN_ORDER: ItemError("Incorrect order ID"),
            }
        elif action == "add":
            created = client.add(LIKES, LINK, 100)
            assert sim.truth([created])[created] is not None
        else:
            refill_id = client.refill(order)
            truth = sim.refill_truth([int(refill_id)])[int(refill_id)]
            assert truth is not None and truth["order"] == order
    stats = sim.stats()
    assert stats["actions"][wire_action]["calls"] == 1
    assert stats["faults_fired"] == {kind: 1}
    assert [(r.action, r.error, r.salvaged) for r in records] == [(wire_action, None, NOISE_KINDS[kind])]


def test_a_clean_answer_is_not_noisy(sim: SimServer) -> None:
    records: list[CallRecord] = []
    with ProviderClient(sim.url, KEY, after_call=records.append) as client:
        client.status_multi([one(sim.seed_orders(1, age_s=3000))])
    assert [(r.action, r.error, r.salvaged) for r in records] == [("status", None, None)]


def _prepare(
    sim: SimServer, client: ProviderClient, action: str
) -> tuple[Callable[[], object], Callable[[], int]]:
    """The call to make, and how many times the sim has executed it so far."""
    if action == "status":
        order = one(sim.seed_orders(1, age_s=3000))
        return (lambda: client.status(order)), (lambda: 0)
    if action == "add":
        return (lambda: client.add(LIKES, LINK, 100)), (lambda: orders_made(sim))
    if action == "refill":
        order = completed_with_drop(sim)
        return (lambda: client.refill(order)), (lambda: refills_made(sim))

    order = pending_order(sim, FOLLOWERS)

    def cancels() -> int:
        truth = sim.truth([order])[order]
        assert truth is not None
        return 0 if truth["cancel"] is None else 1

    return (lambda: client.cancel([order])), cancels


@pytest.mark.parametrize("action", ["status", "add", "refill", "cancel"])
@pytest.mark.parametrize("kind", sorted(FAULT_CASES))
def test_fault(sim: SimServer, impatient_client: ProviderClient, kind: str, action: str) -> None:
    case = FAULT_CASES[kind]
    call, executed = _prepare(sim, impatient_client, action)
    executed_before = executed()
    sim.reset_stats()
    sim.inject_fault(kind, actions=[action], seconds=case.seconds)

    with pytest.raises(case.error) as caught:
        call()
    error = caught.value

    attempts = 1 + RETRIES if case.retried and action == "status" else 1
    stats = sim.stats()
    assert stats["actions"][action]["calls"] == attempts
    assert stats["faults_fired"] == {kind: attempts}
    assert error.action == action
    if case.error is TransportError:
        assert type(error) is TransportError  # refused/reset, not a timeout
    if case.status_code is not None:
        assert isinstance(error, HTTPError) and error.status_code == case.status_code
    if isinstance(error, RateLimited):
        assert error.retry_after == case.seconds
    assert_key_free(error)

    sim.clear_faults()
    if kind == "hold":
        assert sim.release_held() == attempts
    if action != "status":
        expected = executed_before + (1 if case.executed else 0)
        wait_until(lambda: executed() == expected, limit_s=SLOW_S * 5)
        assert executed() == expected
    # The connection pool is usable again once the provider behaves.
    assert impatient_client.balance().amount > 0


@pytest.mark.parametrize("action", ["services", "balance", "status_multi", "refill_status"])
def test_other_read_only_actions_are_retried(
    sim: SimServer, client: ProviderClient, action: str
) -> None:
    order = completed_with_drop(sim)
    refill_id = client.refill(order)
    calls_for: dict[str, tuple[str, Callable[[], object]]] = {
        "services": ("services", client.services),
        "balance": ("balance", client.balance),
        "status_multi": ("status", lambda: client.status_multi([order])),
        "refill_status": ("refill_status", lambda: client.refill_status(refill_id)),
    }
    wire_action, call = calls_for[action]
    sim.reset_stats()
    sim.inject_fault("http_502", actions=[wire_action])
    with pytest.raises(HTTPError):
        call()
    assert calls(sim, wire_action) == 1 + RETRIES
    sim.clear_faults()
    sim.reset_stats()
    sim.inject_fault("drop_connection", actions=[wire_action], count=1)
    call()  # the retry succeeds
    assert calls(sim, wire_action) == 2


def test_status_recovers_after_one_server_error(sim: SimServer, client: ProviderClient) -> None:
    order = one(sim.seed_orders(1, age_s=3000))
    sim.inject_fault("http_500", actions=["status"], count=1)
    report = client.status(order)
    truth = sim.truth([order])[order]
    assert truth is not None and report == expected_report(truth)
    assert calls(sim, "status") == 2


# --- timing --------------------------------------------------------------------------


def test_figure_status_multi_100_ids(sim: SimServer) -> None:
    ids = sim.seed_orders(100, age_s=3000)
    with ProviderClient(sim.url, KEY) as keep_alive:
        for _ in range(5):
            keep_alive.status_multi(ids)
        durations_ms: list[float] = []
        answers: dict[int, OrderResult] = {}
        for _ in range(200):
            started = time.perf_counter()
            answers = keep_alive.status_multi(ids)
            durations_ms.append((time.perf_counter() - started) * 1000)
    assert len(answers) == 100
    assert calls(sim, "status") == 205
    median = statistics.median(durations_ms)
    p95 = statistics.quantiles(durations_ms, n=20)[18]
    print(f"\n[figures] client->sim 100-ID status: median={median:.2f}ms p95={p95:.2f}ms")
