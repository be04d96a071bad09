"""The simulated API v2 provider, over real HTTP: order life cycles, the dialects' answer
shapes against the seed docs' examples, refill and cancel rules, balance, every fault
kind, the 100-ID limit, the request counters, and the ``tracker sim`` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from tracker.core.status import normalize_order_status
from tracker.sim import SimAdmin, SimServer

pytestmark = pytest.mark.integration

KEY = "sim-test-key-4b1d"
SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seeds"
SEED_PREFIXES = {
    "standard": ("000", "002"),
    "nocurrency": ("001",),
    "singles": ("003",),
    "promobox": ("004",),
}
FOLLOWERS, COMMENTS, LIKES, VIEWS = 1, 2, 3, 4  # refill+cancel, cancel, neither, refill


class Api:
    """Form-encoded POSTs to the sim's API v2 URL over one keep-alive session."""

    def __init__(self, url: str, key: str = KEY) -> None:
        self.url = url
        self.key = key
        self.session = requests.Session()

    def post(self, **params: str) -> requests.Response:
        return self.session.post(self.url, data={"key": self.key, **params}, timeout=10)

    def __call__(self, **params: str) -> Any:
        response = self.post(**params)
        assert response.status_code == 200, response.text
        return response.json()


def ids_text(ids: list[int]) -> str:
    return ",".join(str(order_id) for order_id in ids)


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with SimServer(seed=7, api_key=KEY) as sim:
        yield sim


@pytest.fixture
def sim(server: SimServer) -> SimServer:
    server.reset()  # forget orders, faults and counters; restore the startup config
    return server


@pytest.fixture
def api(sim: SimServer) -> Iterator[Api]:
    client = Api(sim.url)
    yield client
    client.session.close()


def truth_of(sim: SimServer, order_id: int) -> dict[str, Any]:
    record = sim.truth([order_id])[order_id]
    assert record is not None, f"the sim does not know order {order_id}"
    return record


def completed_orders(sim: SimServer, count: int = 1, **overrides: Any) -> list[int]:
    """Orders that are Completed once the sim clock has moved 20 s on (done here)."""
    spec: dict[str, Any] = {
        "service": FOLLOWERS,
        "quantity": 1000,
        "outcome": "Completed",
        "pending_s": 0.0,
        "progress_s": 10.0,
        "natural_drop": False,
    }
    spec.update(overrides)
    ids = sim.seed_orders(count=count, **spec)
    sim.advance(20)
    return ids


# -- life cycle ----------------------------------------------------------------------------


def test_orders_progress_to_final_with_speed_up_consistently_with_the_truth(
    sim: SimServer, api: Api
) -> None:
    sim.set_config(speed=600)  # default plans end within 600 sim s: 1 s here
    ids = sim.seed_orders(count=30)
    seen: dict[int, list[tuple[str, int, str, int]]] = {order_id: [] for order_id in ids}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = api(action="status", orders=ids_text(ids))
        for order_id in ids:
            entry = answer[str(order_id)]
            state = (
                entry["status"],
                int(entry["remains"]),
                entry["charge"],
                int(entry["start_count"]),
            )
            if not seen[order_id] or seen[order_id][-1] != state:
                seen[order_id].append(state)
        if all(seen[order_id][-1][0] in ("Completed", "Partial", "Canceled") for order_id in ids):
            break
        time.sleep(0.02)

    truth = sim.truth(ids)
    statuses_seen = {state[0] for states in seen.values() for state in states}
    assert {"Pending", "In progress", "Completed"} <= statuses_seen
    for order_id in ids:
        record = truth[order_id]
        assert record is not None and record["final"]
        assert seen[order_id][-1][0] == record["status"]
        # What we saw over HTTP is a subsequence of the truth's timeline, in order.
        timeline = [
            (entry["raw_status"], entry["remains"], entry["charge"], entry["start_count"])
            for entry in record["timeline"]
        ]
        position = 0
        for state in seen[order_id]:
            position = timeline.index(state, position) + 1
        times = [entry["at"] for entry in record["timeline"]]
        assert times == sorted(times)


def test_status_answers_follow_the_clock(sim: SimServer, api: Api) -> None:
    [order_id] = sim.seed_orders(
        service=FOLLOWERS,
        quantity=1000,
        outcome="Partial",
        pending_s=60,
        progress_s=120,
        start_count=500,
    )
    first = api(action="status", order=str(order_id))
    assert first == {
        "charge": "0.90000",
        "start_count": "0",
        "status": "Pending",
        "remains": "1000",
        "currency": "USD",
    }
    sim.advance(61)
    running = api(action="status", order=str(order_id))
    assert (running["status"], running["start_count"]) == ("In progress", "500")
    sim.advance(200)
    final = api(action="status", order=str(order_id))
    remains = int(final["remains"])
    assert final["status"] == "Partial" and 0 < remains < 1000
    assert Decimal(final["charge"]) == (Decimal("0.90") * (1000 - remains) / 1000).quantize(
        Decimal("0.00001")
    )


def test_a_thousand_seeded_orders_answer_a_100_id_call_with_100_entries(
    sim: SimServer, api: Api
) -> None:
    ids = sim.seed_orders(count=1000)
    answer = api(action="status", orders=ids_text(ids[450:550]))
    assert sorted(answer, key=int) == [str(order_id) for order_id in ids[450:550]]
    assert all("status" in entry for entry in answer.values())


def test_a_million_orders_are_seeded_at_once(sim: SimServer, api: Api) -> None:
    # How long seeding a million takes is a figure of the machine: benchmarks/timing_checks.py.
    admin = SimAdmin(sim.base_url)
    ids = admin.seed_orders(count=1_000_000)
    assert len(ids) == 1_000_000 and ids[-1] - ids[0] == 999_999
    answer = api(action="status", orders=ids_text(ids[-100:]))
    assert len(answer) == 100
    assert sim.stats()["orders"] == 1_000_000


# -- dialects against the seeds ----------------------------------------------------------


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


_NUMBER_FIELDS = {"charge", "start_count", "remains", "balance"}


def seed_shape(value: Any, numbers_as_json: bool) -> Any:
    """The seed example's shape; ``nocurrency`` sends these fields as JSON numbers."""
    result = shape(value)
    if numbers_as_json and isinstance(result, dict):
        return {key: "number" if key in _NUMBER_FIELDS else item for key, item in result.items()}
    return result


def dialect_answers(sim: SimServer, api: Api, dialect: str) -> dict[str, Any]:
    """One answer per seed example name, produced the way the seed documents it."""
    sim.set_config(dialect=dialect)
    done = completed_orders(sim, count=2)
    [running] = sim.seed_orders(service=FOLLOWERS, quantity=1000, pending_s=0, progress_s=10_000)
    unknown = "999999999"
    answers: dict[str, Any] = {
        "services": api(action="services"),
        "balance": api(action="balance"),
        "add": api(action="add", service=str(LIKES), link="https://x.test/p", quantity="100"),
        "status": api(action="status", order=str(done[0])),
        "status_multi": api(action="status", orders=f"{done[0]},{unknown},{running}"),
    }
    refill_form = "orders" if dialect == "promobox" else "order"
    answers["refill"] = api(action="refill", **{refill_form: str(done[0])})
    refill_id = str(truth_of(sim, done[0])["refills"][0]["refill_id"])
    answers["refill_status"] = api(action="refill_status", refill=refill_id)
    if dialect in ("standard", "nocurrency"):
        answers["refill_multi"] = api(action="refill", orders=f"{done[1]},{unknown}")
        answers["refill_status_multi"] = api(
            action="refill_status", refills=f"{refill_id},{unknown}"
        )
    if dialect in ("standard", "promobox"):
        answers["cancel"] = api(action="cancel", orders=f"{unknown},{running}")
    return answers


def _assert_entries_match(
    actual: list[Any] | dict[str, Any], example: list[Any] | dict[str, Any], numbers_as_json: bool
) -> None:
    """Per-ID answers: error entries as in the example, good entries shaped like its own."""
    example_entries = list(example.values()) if isinstance(example, dict) else example
    actual_entries = list(actual.values()) if isinstance(actual, dict) else actual

    def is_error(entry: Any) -> bool:
        return "error" in entry or any(isinstance(v, dict) for v in entry.values())

    good = [seed_shape(entry, numbers_as_json) for entry in example_entries if not is_error(entry)]
    errors = [shape(entry) for entry in example_entries if is_error(entry)]
    assert any(is_error(entry) for entry in actual_entries)
    for entry in actual_entries:
        if is_error(entry):
            assert shape(entry) in errors
            nested = entry.get("error") or next(v for v in entry.values() if isinstance(v, dict))
            texts = [
                e.get("error") or next(v for v in e.values() if isinstance(v, dict))
                for e in example_entries
                if is_error(e)
            ]
            assert nested in texts
        else:
            assert shape(entry) in good, (entry, good)


@pytest.mark.parametrize("dialect", sorted(SEED_PREFIXES))
def test_answer_shapes_match_the_seed_examples(sim: SimServer, api: Api, dialect: str) -> None:
    answers = dialect_answers(sim, api, dialect)
    numbers_as_json = dialect == "nocurrency"
    compared = 0
    for prefix in SEED_PREFIXES[dialect]:
        for path in sorted(SEEDS.glob(f"{prefix}_*.json")):
            name = path.stem.split("_", 1)[1]
            if name.endswith("_broken"):
                continue
            example = json.loads(path.read_text())
            actual = answers[name]
            compared += 1
            if name == "services":
                for entry in actual:
                    assert shape(entry) == shape(example[0]), (dialect, entry)
            elif name in ("status_multi", "refill_multi", "refill_status_multi", "cancel"):
                _assert_entries_match(actual, example, numbers_as_json)
            else:
                assert shape(actual) == seed_shape(example, numbers_as_json), (dialect, name)
    assert compared >= 6


def test_spellings_and_quirks_of_each_dialect(sim: SimServer, api: Api) -> None:
    over = [
        order_id
        for order_id in completed_orders(sim, count=60)
        if truth_of(sim, order_id)["plan"]["delivered"] > 1000
    ]
    assert over, "some completed orders over-deliver"
    [canceled] = sim.seed_orders(outcome="Canceled", pending_s=0, progress_s=5)
    [running] = sim.seed_orders(pending_s=0, progress_s=10_000)
    sim.advance(10)
    expected = {
        "standard": ("Canceled", "In progress", "Completed"),
        "nocurrency": ("Canceled", "In Progress", "Complete"),
        "singles": ("Cancelled", "In progress", "Completed"),
        "promobox": ("Refunded", "inprogress", "Completed"),
    }
    for dialect, spellings in expected.items():
        sim.set_config(dialect=dialect)
        answer = api(action="status", orders=f"{canceled},{running},{over[0]}")
        got = tuple(answer[str(order_id)]["status"] for order_id in (canceled, running, over[0]))
        assert got == spellings
        assert all(normalize_order_status(s).value != "Unknown" for s in got)
        remains = answer[str(over[0])]["remains"]
        if dialect == "nocurrency":
            assert remains < 0 and "currency" not in answer[str(over[0])]
        else:
            assert remains == "0" and answer[str(over[0])]["currency"] == "USD"


def test_singles_and_promobox_refuse_the_batch_refill_forms(sim: SimServer, api: Api) -> None:
    done = completed_orders(sim, count=2)
    sim.set_config(dialect="singles")
    assert api(action="refill", orders=ids_text(done)) == {"error": "Incorrect request"}
    assert api(action="refill_status", refills="1,2") == {"error": "Incorrect request"}
    assert api(action="cancel", orders=ids_text(done)) == {"error": "Incorrect request"}
    sim.set_config(dialect="promobox")
    assert api(action="refill", orders=ids_text(done)) == {"error": "Incorrect request"}
    assert api(action="refill_status", refills="1") == {"error": "Incorrect request"}
    created = api(action="refill", orders=str(done[0]))
    assert set(created) == {"refill"} and isinstance(created["refill"], str)
    assert api(action="refill_status", refill=created["refill"]) == {"refill": "Pending"}


# -- refill rules --------------------------------------------------------------------------


def test_refill_is_refused_for_a_service_without_refill(sim: SimServer, api: Api) -> None:
    [order_id] = completed_orders(sim, service=LIKES)
    assert api(action="refill", order=str(order_id)) == {
        "error": "Refill is disabled for this service"
    }


def test_refill_is_refused_until_the_order_is_completed(sim: SimServer, api: Api) -> None:
    [order_id] = sim.seed_orders(
        service=FOLLOWERS, pending_s=100, progress_s=100, outcome="Completed"
    )
    assert api(action="refill", order=str(order_id)) == {"error": "Order is not completed yet"}
    sim.advance(150)
    assert api(action="refill", order=str(order_id)) == {"error": "Order is not completed yet"}
    sim.advance(60)
    assert set(api(action="refill", order=str(order_id))) == {"refill"}


def test_refill_too_early_after_completion(sim: SimServer, api: Api) -> None:
    sim.set_config(refill_too_early_s=3600)
    [order_id] = completed_orders(sim)
    too_early = {"error": "Too early for refill, try again later"}
    assert api(action="refill", order=str(order_id)) == too_early
    sim.advance(3000)
    assert api(action="refill", order=str(order_id)) == too_early
    sim.advance(700)
    assert set(api(action="refill", order=str(order_id))) == {"refill"}


def test_refill_window_closes(sim: SimServer, api: Api) -> None:
    sim.set_config(refill_window_s=600)
    [order_id] = completed_orders(sim)
    sim.advance(700)
    assert api(action="refill", order=str(order_id)) == {"error": "Refill period expired"}


def test_one_active_refill_per_order(sim: SimServer, api: Api) -> None:
    sim.set_config(refill_pending_s=30, refill_progress_s=60)
    [order_id] = completed_orders(sim)
    sim.drop(order_id, 10)
    first = api(action="refill", order=str(order_id))
    assert api(action="refill", order=str(order_id)) == {"error": "Refill already in progress"}
    multi = api(action="refill", orders=str(order_id))
    assert multi == [{"order": order_id, "refill": {"error": "Refill already in progress"}}]
    sim.advance(100)
    assert api(action="refill_status", refill=first["refill"]) == {"status": "Completed"}
    second = api(action="refill", order=str(order_id))
    assert int(second["refill"]) > int(first["refill"])


def test_refill_restores_a_drop_and_is_rejected_when_nothing_dropped(
    sim: SimServer, api: Api
) -> None:
    sim.set_config(refill_pending_s=30, refill_progress_s=60)
    dropped, intact = completed_orders(sim, count=2, start_count=100)
    assert sim.count(dropped) == {"order": dropped, "count": 1100, "expected": 1100}
    after_drop = sim.drop(dropped, 40)
    assert after_drop["count"] == 1060
    count_answer = requests.get(f"{sim.base_url}/count", params={"order": dropped}, timeout=5)
    assert count_answer.json() == {"order": dropped, "count": 1060, "expected": 1100}

    created = api(action="refill", orders=f"{dropped},{intact},12345678")
    assert [entry["order"] for entry in created] == [dropped, intact, 12345678]
    refill_ids = [entry["refill"] for entry in created[:2]]
    assert all(isinstance(refill_id, int) for refill_id in refill_ids)
    assert created[2]["refill"] == {"error": "Incorrect order ID"}

    def statuses() -> list[Any]:
        answer = api(action="refill_status", refills=f"{refill_ids[0]},{refill_ids[1]},999")
        return [entry["status"] for entry in answer]

    assert statuses() == ["Pending", "Pending", {"error": "Refill not found"}]
    sim.advance(31)
    assert statuses() == ["In progress", "Rejected", {"error": "Refill not found"}]
    sim.advance(60)
    assert statuses() == ["Completed", "Rejected", {"error": "Refill not found"}]
    assert sim.count(dropped) == {"order": dropped, "count": 1100, "expected": 1100}
    truth = truth_of(sim, dropped)
    assert (truth["dropped"], truth["restored"], truth["outstanding_drop"]) == (40, 40, 0)
    assert [e["status"] for e in truth["refills"][0]["timeline"]] == [
        "Pending",
        "In progress",
        "Completed",
    ]
    assert api(action="refill_status", refill="999") == {"error": "Refill not found"}


def test_natural_drops_happen_after_completion_for_refill_services(sim: SimServer) -> None:
    [order_id] = completed_orders(sim, natural_drop=True)
    truth = truth_of(sim, order_id)
    assert truth["dropped"] == 0
    sim.advance(truth["plan"]["drop_at"] - sim.provider.now() + 1)
    later = truth_of(sim, order_id)
    assert later["dropped"] == truth["plan"]["drop_amount"] > 0
    assert later["count"] == later["expected_count"] - later["dropped"]


# -- cancel --------------------------------------------------------------------------------


def test_cancel_rules(sim: SimServer, api: Api) -> None:
    [pending] = sim.seed_orders(service=FOLLOWERS, pending_s=100, progress_s=100)
    [no_cancel] = sim.seed_orders(service=LIKES, pending_s=100, progress_s=100)
    [done] = completed_orders(sim)
    answer = api(action="cancel", orders=f"{pending},{no_cancel},{done},777777777,abc")
    assert answer == [
        {"order": pending, "cancel": 1},
        {"order": no_cancel, "cancel": {"error": "Cancel is disabled for this service"}},
        {"order": done, "cancel": {"error": "Order cannot be canceled in its current status"}},
        {"order": 777777777, "cancel": {"error": "Incorrect order ID"}},
        {"order": "abc", "cancel": {"error": "Incorrect order ID"}},
    ]
    again = api(action="cancel", orders=str(pending))
    assert again == [{"order": pending, "cancel": {"error": "Cancel already requested"}}]


def test_a_canceled_pending_order_is_refunded(sim: SimServer, api: Api) -> None:
    [order_id] = sim.seed_orders(
        service=FOLLOWERS, quantity=1000, outcome="Completed", pending_s=300, progress_s=300
    )
    assert api(action="cancel", orders=str(order_id)) == [{"order": order_id, "cancel": 1}]
    assert api(action="status", order=str(order_id))["status"] == "Pending"
    sim.advance(11)  # the default cancel delay is 10 sim s
    assert api(action="status", order=str(order_id)) == {
        "charge": "0.00000",
        "start_count": "0",
        "status": "Canceled",
        "remains": "1000",
        "currency": "USD",
    }


def test_a_canceled_running_order_ends_partial(sim: SimServer, api: Api) -> None:
    [order_id] = sim.seed_orders(
        service=FOLLOWERS, quantity=1000, outcome="Completed", pending_s=0, progress_s=100
    )
    sim.advance(60)  # past the first remains step; the cancel lands 10 s later, before 100
    api(action="cancel", orders=str(order_id))
    sim.advance(2)
    assert api(action="status", order=str(order_id))["status"] == "In progress"
    sim.advance(10)
    final = api(action="status", order=str(order_id))
    remains = int(final["remains"])
    assert final["status"] == "Partial" and 0 < remains < 1000
    assert Decimal(final["charge"]) == Decimal("0.90") * (1000 - remains) / 1000
    truth = truth_of(sim, order_id)
    assert truth["final"] and truth["cancel"] is not None


def test_cancel_is_unknown_where_the_seed_has_none(sim: SimServer, api: Api) -> None:
    [order_id] = sim.seed_orders(pending_s=100)
    for dialect in ("nocurrency", "singles"):
        sim.set_config(dialect=dialect)
        assert api(action="cancel", orders=str(order_id)) == {"error": "Incorrect request"}


# -- add and balance -----------------------------------------------------------------------


def test_add_deducts_the_charge_from_the_balance(sim: SimServer, api: Api) -> None:
    assert api(action="balance") == {"balance": "1000.00000", "currency": "USD"}
    created = api(action="add", service=str(FOLLOWERS), link="https://x.test/a", quantity="1000")
    assert set(created) == {"order"} and isinstance(created["order"], int)
    assert api(action="balance")["balance"] == "999.10000"
    comments = api(
        action="add",
        service=str(COMMENTS),
        link="https://x.test/b",
        comments="great\nnice\r\n" + "\n".join(f"c{i}" for i in range(18)),
    )
    truth = sim.truth([comments["order"]])[comments["order"]]
    assert truth is not None and truth["quantity"] == 20
    assert api(action="balance")["balance"] == "998.94000"  # 20 comments at 8 per 1000
    drip = api(
        action="add",
        service=str(LIKES),
        link="https://x.test/c",
        quantity="100",
        runs="5",
        interval="30",
    )
    truth = sim.truth([drip["order"]])[drip["order"]]
    assert truth is not None and truth["quantity"] == 500
    assert api(action="status", order=str(created["order"]))["status"] == "Pending"


def test_add_validates_service_quantity_and_link(api: Api) -> None:
    def add(**params: str) -> Any:
        return api(action="add", **{"service": "1", "link": "https://x.test", **params})

    assert add(service="99") == {"error": "Incorrect service ID"}
    assert add(link="", quantity="100") == {"error": "Incorrect link"}
    assert add(quantity="49") == {"error": "Quantity less than minimal 50"}
    assert add(quantity="10001") == {"error": "Quantity more than maximal 10000"}
    assert add(quantity="abc") == {"error": "Quantity less than minimal 50"}
    assert api(action="balance")["balance"] == "1000.00000"


def test_not_enough_funds(sim: SimServer, api: Api) -> None:
    sim.set_config(balance="1.00000")
    assert api(action="add", service="4", link="https://x.test", quantity="1000") == {
        "error": "Not enough funds"
    }
    assert set(api(action="add", service="4", link="https://x.test", quantity="400")) == {"order"}
    assert api(action="balance")["balance"] == "0.00000"


# -- protocol, key, limits -----------------------------------------------------------------


def test_get_with_query_parameters_is_answered_like_post(sim: SimServer, api: Api) -> None:
    """Real panels accept GET with the parameters in the query string, and some clients
    (optsmm on PyPI) send nothing else."""
    done = completed_orders(sim, count=3)

    def get(**params: str) -> Any:
        response = api.session.get(sim.url, params={"key": KEY, **params}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    assert get(action="balance") == api(action="balance")
    assert get(action="status", order=str(done[0])) == api(action="status", order=str(done[0]))
    assert get(action="status", orders=ids_text(done)) == api(action="status", orders=ids_text(done))
    created = get(action="refill", order=str(done[1]))
    assert set(created) == {"refill"}
    assert get(action="refill_status", refill=str(created["refill"])) == {"status": "Pending"}
    assert get(action="frobnicate") == {"error": "Incorrect request"}
    assert api.session.get(sim.url, params={"key": "wrong", "action": "balance"}, timeout=10).json() == {
        "error": "Invalid API key"
    }
    assert sim.stats()["actions"]["balance"]["calls"] >= 2


def test_protocol_errors(sim: SimServer, api: Api) -> None:
    refused = requests.put(sim.url, data={"key": KEY, "action": "balance"}, timeout=5)
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, POST"
    assert (
        api.session.post(sim.url + "/", data={"key": KEY, "action": "balance"}, timeout=5).json()[
            "currency"
        ]
        == "USD"
    )
    assert api(action="frobnicate") == {"error": "Incorrect request"}
    assert api(action="status") == {"error": "Incorrect request"}
    assert api(action="status", order="31337") == {"error": "Incorrect order ID"}
    assert requests.post(f"{sim.base_url}/api/v3", timeout=5).status_code == 404


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PROPFIND", "TRACE"])
def test_every_other_method_on_the_api_gets_405(sim: SimServer, api: Api, method: str) -> None:
    """Not 501 (BaseHTTPRequestHandler's answer to a method it has no do_ for): the API
    takes GET and POST and says so, as docs/changelog.md promised. A HEAD answer has no
    body, and the keep-alive connection it came on still serves the next call."""
    refused = api.session.request(method, sim.url, timeout=5)
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, POST"
    if method == "HEAD":
        assert refused.content == b""
    else:
        assert refused.json() == {"error": "Method not allowed"}
    assert api(action="balance")["currency"] == "USD"
    assert api.session.request(method, f"{sim.base_url}/api/v3", timeout=5).status_code == 404
    assert api(action="balance")["currency"] == "USD"


def test_invalid_and_rotated_keys(sim: SimServer, api: Api) -> None:
    assert Api(sim.url, key="wrong")(action="balance") == {"error": "Invalid API key"}
    assert Api(sim.url, key="")(action="balance") == {"error": "Invalid API key"}
    sim.set_config(api_key="rotated-key")
    assert api(action="balance") == {"error": "Invalid API key"}
    assert Api(sim.url, key="rotated-key")(action="balance")["currency"] == "USD"
    assert sim.stats()["rejected_invalid_key"] == 3
    assert "rotated-key" not in json.dumps(sim.set_config())


@pytest.mark.parametrize(
    ("action", "param"),
    [
        ("status", "orders"),
        ("refill", "orders"),
        ("refill_status", "refills"),
        ("cancel", "orders"),
    ],
)
def test_more_than_100_ids_are_rejected_and_counted(
    sim: SimServer, api: Api, action: str, param: str
) -> None:
    ids = sim.seed_orders(count=101)
    assert api(action=action, **{param: ids_text(ids)}) == {"error": "Maximum 100 IDs per request"}
    assert isinstance(api(action=action, **{param: ids_text(ids[:100])}), (list, dict))
    counters = sim.stats()["actions"][action]
    assert counters["rejected_over_100"] == 1
    assert counters["max_ids"] == 101
    assert counters["ids_total"] == 201


def test_stats_count_calls_ids_and_the_busiest_second(sim: SimServer, api: Api) -> None:
    sim.set_config(track_per_id=True)
    ids = sim.seed_orders(count=10)
    for _ in range(5):
        api(action="status", orders=ids_text(ids[:4]))
    api(action="status", order=str(ids[9]))
    api(action="balance")
    stats = sim.stats()
    status = stats["actions"]["status"]
    assert (status["calls"], status["ids_total"], status["max_ids"]) == (6, 21, 4)
    assert 1 <= status["max_calls_in_any_1s_window"] <= 6
    assert stats["actions"]["balance"]["calls"] == 1
    assert stats["all"]["calls"] == 7
    polls = stats["status_polls_per_order"]
    assert polls == {str(ids[0]): 5, str(ids[1]): 5, str(ids[2]): 5, str(ids[3]): 5, str(ids[9]): 1}

    sim.reset_stats()
    api(action="status", order=str(ids[0]))
    time.sleep(1.05)  # on purpose: the next call falls outside the first one's 1 s window
    api(action="status", order=str(ids[0]))
    assert sim.stats()["actions"]["status"]["max_calls_in_any_1s_window"] == 1


def test_latency_is_added_to_api_answers(sim: SimServer, api: Api) -> None:
    sim.set_config(latency_ms=150)
    started = time.monotonic()
    api(action="balance")
    assert time.monotonic() - started >= 0.15


# -- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        ("http_500", 500, lambda r: "Internal Server Error" in r.text),
        ("http_502", 502, lambda r: "Bad Gateway" in r.text),
        ("html", 503, lambda r: "Just a moment" in r.text and "html" in r.headers["Content-Type"]),
        ("html_200", 200, lambda r: r.text.lstrip().startswith("<!DOCTYPE html>")),
        ("rate_limit", 429, lambda r: r.headers["Retry-After"] == "7"),
        ("invalid_key", 200, lambda r: r.json() == {"error": "Invalid API key"}),
        ("broken_json", 200, lambda r: r.text.startswith("{") and not _parses(r.text)),
        (
            "php_warning",
            200,
            lambda r: (
                r.text.startswith("<br />")
                and json.loads(r.text[r.text.index("{") :])["currency"] == "USD"
            ),
        ),
    ],
)
def test_answer_faults(
    sim: SimServer, api: Api, kind: str, status: int, check: Callable[[requests.Response], bool]
) -> None:
    sim.inject_fault(kind, count=1, seconds=7)
    response = api.post(action="balance")
    assert response.status_code == status
    assert check(response)
    assert api(action="balance")["currency"] == "USD"  # count=1: the next call is clean
    assert sim.stats()["faults_fired"] == {kind: 1}


@pytest.mark.parametrize(
    ("kind", "marker"),
    [
        ("php_deprecated", "<b>Deprecated</b>:"),
        ("php_notice", "<b>Notice</b>:"),
        ("php_notice_text", "PHP Deprecated:"),
        ("codeigniter_notice", "<p>Severity: 8192</p>"),
        ("codeigniter_warning", "<p>Severity: Warning</p>"),
        ("laravel_deprecation", "(E_DEPRECATED)"),
    ],
)
def test_debug_mode_noise_comes_before_the_real_answer(
    sim: SimServer, api: Api, kind: str, marker: str
) -> None:
    sim.inject_fault(kind, count=1)
    response = api.post(action="balance")
    assert response.status_code == 200
    noise, _, answer = response.text.rpartition('{"balance"')
    assert marker in noise and not noise.lstrip().startswith("{")
    assert json.loads('{"balance"' + answer)["currency"] == "USD"
    assert sim.stats()["faults_fired"] == {kind: 1}


def test_php_fatal_follows_the_real_answer(sim: SimServer, api: Api) -> None:
    sim.inject_fault("php_fatal", count=1)
    response = api.post(action="balance")
    noise, _, rest = response.text.partition('{"balance"')
    answer, _, fatal = rest.partition("}")
    assert "<b>Deprecated</b>:" in noise and "<b>Fatal error</b>:  Uncaught" in fatal
    assert json.loads('{"balance"' + answer + "}")["currency"] == "USD"
    assert sim.stats()["faults_fired"] == {"php_fatal": 1}


def test_single_id_orders_as_order(sim: SimServer, api: Api) -> None:
    [order_id] = sim.seed_orders()
    assert set(api(action="status", orders=str(order_id))) == {str(order_id)}
    sim.set_config(single_id_orders_as_order=True)
    assert api(action="status", orders=str(order_id)) == api(action="status", order=str(order_id))
    assert api(action="status", orders="9000000") == {"error": "Incorrect order ID"}
    both = api(action="status", orders=f"{order_id},9000000")
    assert both["9000000"] == {"error": "Incorrect order ID"} and str(order_id) in both


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_drop_connection_fault_closes_without_an_answer(sim: SimServer, api: Api) -> None:
    sim.inject_fault("drop_connection", count=1)
    with pytest.raises(requests.ConnectionError):
        api.post(action="balance")
    assert api(action="balance")["currency"] == "USD"


def test_slow_fault_delays_the_answer(sim: SimServer, api: Api) -> None:
    sim.inject_fault("slow", count=1, seconds=0.3)
    started = time.monotonic()
    assert api(action="balance")["currency"] == "USD"
    assert time.monotonic() - started >= 0.3
    sim.inject_fault("slow", count=1, seconds=1.0)
    with pytest.raises(requests.Timeout):
        api.session.post(api.url, data={"key": KEY, "action": "balance"}, timeout=0.2)


def test_hold_fault_parks_requests_until_released(sim: SimServer) -> None:
    sim.inject_fault("hold", actions=["status"])
    [order_id] = sim.seed_orders()
    results: list[Any] = []

    def poll() -> None:
        results.append(Api(sim.url)(action="status", order=str(order_id)))

    threads = [threading.Thread(target=poll) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while sim.stats()["held_now"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.stats()["held_now"] == 2
    assert Api(sim.url)(action="balance")["currency"] == "USD"  # other actions pass
    assert results == []
    assert sim.release_held() == 2
    for thread in threads:
        thread.join(5)
    assert [answer["status"] for answer in results] == ["Pending", "Pending"]
    assert sim.stats()["held_now"] == 0


def test_fault_rules_match_actions_counts_and_probability(sim: SimServer, api: Api) -> None:
    sim.inject_fault("http_500", probability=0.0)
    sim.inject_fault("http_502", count=2, actions=["services"])
    assert api.post(action="balance").status_code == 200
    assert [api.post(action="services").status_code for _ in range(3)] == [502, 502, 200]
    assert len(sim.stats()["faults_queued"]) == 1
    sim.inject_fault("rate_limit", probability=0.5)
    codes = [api.post(action="balance").status_code for _ in range(60)]
    assert 10 < codes.count(429) < 50
    assert sim.clear_faults() == 2
    assert api.post(action="balance").status_code == 200
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.inject_fault("meteor")


# -- admin over HTTP and the subprocess ----------------------------------------------------


def test_admin_http_api(sim: SimServer) -> None:
    admin = SimAdmin(sim.url)
    ids = admin.seed_orders(
        count=3, outcome="Completed", pending_s=0, progress_s=5, quantity=100, natural_drop=False
    )
    admin.advance(10)
    truth = admin.truth([*ids, 424242424])
    assert truth[424242424] is None
    assert all(
        record is not None and record["status"] == "Completed"
        for order_id, record in truth.items()
        if order_id != 424242424
    )
    count = admin.count(ids[0])
    assert count is not None and admin.drop(ids[0], 5)["count"] == count["count"] - 5
    assert admin.count(424242424) is None
    with pytest.raises(ValueError):
        admin.drop(424242424, 5)
    assert admin.set_config(speed=2.0)["speed"] == 2.0
    reply = requests.post(f"{sim.admin_url}/orders", json={"count": 5}, timeout=5).json()
    assert reply["ids"] == list(range(reply["first"], reply["last"] + 1))
    assert (
        requests.post(f"{sim.admin_url}/orders", json={"service": 99}, timeout=5).status_code == 400
    )
    assert requests.get(f"{sim.admin_url}/nothing", timeout=5).status_code == 404
    admin.reset()
    assert admin.truth(ids) == {order_id: None for order_id in ids}
    assert admin.set_config()["speed"] == 1.0


@pytest.fixture(scope="module")
def sim_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    repo_root = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRACKER_SIM_KEY": KEY, "PYTHONPATH": python_path}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tracker.sim.cli import run_sim; raise SystemExit(run_sim())",
            "--port",
            "0",
            "--dialect",
            "nocurrency",
            "--speed",
            "600",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    try:
        yield process, line
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_the_sim_runs_as_a_process(sim_process: tuple[subprocess.Popen[str], str]) -> None:
    process, line = sim_process
    prefix = "sim listening on http://127.0.0.1:"
    assert line.startswith(prefix) and line.endswith("/api/v2 dialect=nocurrency"), line
    assert KEY not in line
    url = line.split()[3]
    admin = SimAdmin(url)
    admin.wait_ready()
    seeded_at = time.monotonic()
    [order_id] = admin.seed_orders(outcome="Completed", pending_s=600, progress_s=60, quantity=100)
    assert Api(url, key="not-the-env-key")(action="balance") == {"error": "Invalid API key"}
    api = Api(url)
    assert api(action="status", order=str(order_id))["status"] == "Pending"
    deadline = seeded_at + 10
    while (final := api(action="status", order=str(order_id)))["status"] == "Pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert time.monotonic() - seeded_at >= 0.9  # 600 sim s at --speed 600
    while (final := api(action="status", order=str(order_id)))["status"] != "Complete":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert isinstance(final["remains"], int) and "currency" not in final
    by_get = requests.get(url, params={"key": KEY, "action": "status", "order": str(order_id)}, timeout=10)
    assert by_get.status_code == 200 and by_get.json() == final
    admin.inject_fault("http_502", count=1)
    assert api.post(action="balance").status_code == 502
    assert admin.stats()["faults_fired"] == {"http_502": 1}

    process.send_signal(signal.SIGTERM)
    assert process.wait(5) == 0
