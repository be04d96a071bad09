"""The shop's `tracker.track_orders`: what its result tells the shop (Flower shows it),
with the in-memory stand-ins."""

from __future__ import annotations

from tests.usecases.helpers import API_KEY
from tracker.orders.enqueue import SHOWN_REFUSALS, track_orders
from tracker.testing import MemoryDatabase, SettableClock

KEY_BY_MISTAKE = "sk-live-0123456789abcdef0123456789abcdef"


def test_the_result_names_each_refused_id_with_its_reason(
    db: MemoryDatabase, clock: SettableClock, provider_id: int
) -> None:
    with db.unit_of_work() as session:
        first = track_orders(session, "panel", [1001, "12x", "1002", -5, KEY_BY_MISTAKE, 1001], now=clock())
    assert first.task_result() == {
        "added": 2,
        "already_tracked": 0,
        "rejected": 3,
        "refused": [
            {"id": "12x", "reason": "is not a positive whole number"},
            {"id": -5, "reason": "must be a positive number"},
            {"id": "a string of 40 characters", "reason": "is not a positive whole number"},
        ],
    }
    with db.unit_of_work() as session:
        again = track_orders(session, "panel", [1001, "1002"], now=clock())
    # The keys a shop already reads stay as they were.
    assert again.task_result() == {"added": 0, "already_tracked": 2, "rejected": 0, "refused": []}


def test_the_refusals_in_the_result_are_capped_and_carry_no_key(
    db: MemoryDatabase, clock: SettableClock, provider_id: int
) -> None:
    junk = [f"x{index}" for index in range(SHOWN_REFUSALS + 30)]
    with db.unit_of_work() as session:
        result = track_orders(session, "panel", [API_KEY, *junk, 7], now=clock()).task_result()
    assert result["added"] == 1
    assert result["rejected"] == len(junk) + 1
    assert [entry["id"] for entry in result["refused"]] == [
        f"a string of {len(API_KEY)} characters", *junk[: SHOWN_REFUSALS - 1]
    ]
    assert API_KEY not in repr(result) and API_KEY[:16] not in repr(result)
