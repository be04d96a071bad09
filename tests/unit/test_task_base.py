"""The task base (tracker.task_base): every tracker task retries database hiccups the
same way, the shop-facing ones turn bad input into ``InvalidTaskInput`` without a retry,
and ``tracker.request_refill`` keeps its own retry rule. Tasks run eagerly (``apply``):
no broker, and no database for the paths tested here."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from tracker.refills.attempts import NothingSent
from tracker.worker.app import app
from tracker.task_base import SHOP_INPUT_ERRORS, InvalidTaskInput, TrackerTask, enqueue_committed

# Every task the worker registers, by its public name (docs and ../shared/CONTRACT.md).
TASK_NAMES = {
    "tracker.track_orders",
    "tracker.report_drop",
    "tracker.poll_status_batch",
    "tracker.poll_refill_batch",
    "tracker.request_refill",
    "tracker.dispatch_polls",
    "tracker.dispatch_outbox",
    "tracker.deliver_events",
    "tracker.check_balances",
    "tracker.schedule_auto_refills",
    "tracker.probe_counts",
    "tracker.sync_catalogs",
    "tracker.probe_keys",
}


def tracker_tasks() -> dict[str, Any]:
    app.loader.import_default_modules()
    return {name: task for name, task in app.tasks.items() if name.startswith("tracker.")}


def test_every_task_is_a_tracker_task_with_its_public_name() -> None:
    tasks = tracker_tasks()
    assert set(tasks) == TASK_NAMES
    for name, task in tasks.items():
        assert isinstance(task, TrackerTask), name
        # The autoretry wrapper is installed (Celery read the options from the class).
        assert hasattr(task, "_orig_run"), name


SHOP_TASKS = {"tracker.track_orders", "tracker.report_drop"}


@pytest.mark.parametrize("name", sorted(TASK_NAMES - {"tracker.request_refill"}))
def test_database_retry_defaults(name: str) -> None:
    task = tracker_tasks()[name]
    assert task.autoretry_for == (OperationalError, DBAPIError)
    assert task.dont_autoretry_for == (DataError,)
    # A shop's message is the only copy of its order IDs: retried until the database is back.
    tries = None if name in SHOP_TASKS else 5
    assert (task.retry_backoff, task.retry_backoff_max, task.retry_jitter, task.max_retries) == (1, 30, True, tries)


def test_request_refill_keeps_its_own_retry_rule() -> None:
    task = tracker_tasks()["tracker.request_refill"]
    assert task.autoretry_for == (NothingSent,)
    assert task.dont_autoretry_for == ()
    assert (task.retry_backoff, task.retry_backoff_max, task.retry_jitter, task.max_retries) == (1, 30, True, 100)
    assert task.bad_input == ()


def test_only_the_shop_facing_tasks_map_bad_input() -> None:
    mapping = {name: task.bad_input for name, task in tracker_tasks().items() if task.bad_input}
    assert mapping == dict.fromkeys(SHOP_TASKS, SHOP_INPUT_ERRORS)


def test_track_orders_rejects_a_string_for_a_list_before_any_database_work() -> None:
    # (The other bad input of the shop's tasks needs a database: tests/integration/test_bad_input.py.)
    result = tracker_tasks()["tracker.track_orders"].apply(args=["panel", "1,2"])
    assert type(result.result) is InvalidTaskInput
    assert str(result.result) == "order_ids must be a list of order IDs, got str"


# A throwaway app: the base's behaviour on tasks that fail on demand.
scratch = Celery("test-task-base", set_as_current=False)
calls: list[str] = []


@scratch.task(base=TrackerTask, name="test.shop_facing", bad_input=(LookupError, ValueError))
def shop_facing(error: str) -> None:
    calls.append(error)
    raise {"lookup": LookupError("unknown provider 'nope'"), "value": ValueError("is empty"),
           "invalid": InvalidTaskInput("order_ids must be a list"), "type": TypeError("bad")}[error]


@scratch.task(base=TrackerTask, name="test.internal")
def internal(error: str) -> None:
    calls.append(error)
    if error == "operational":
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    if error == "data":
        raise DataError("INSERT", {}, Exception("value too long"))
    raise ValueError("a defect, not the caller's mistake")


@pytest.fixture(autouse=True)
def no_calls() -> None:
    calls.clear()


@pytest.mark.parametrize(
    ("error", "message"),
    [("lookup", "unknown provider 'nope'"), ("value", "is empty"), ("invalid", "order_ids must be a list")],
)
def test_bad_input_becomes_invalid_task_input_with_its_message_and_no_retry(error: str, message: str) -> None:
    result = shop_facing.apply(args=[error])
    assert type(result.result) is InvalidTaskInput
    assert str(result.result) == message
    assert calls == [error]


def test_other_errors_of_a_shop_task_pass_through() -> None:
    result = shop_facing.apply(args=["type"])
    assert type(result.result) is TypeError


def test_without_bad_input_a_value_error_is_not_mapped() -> None:
    result = internal.apply(args=["value"])
    assert type(result.result) is ValueError
    assert calls == ["value"]


def test_a_database_hiccup_is_retried_up_to_max_retries() -> None:
    result = internal.apply(args=["operational"])
    assert isinstance(result.result, OperationalError)
    assert calls == ["operational"] * (1 + TrackerTask.max_retries)


def test_a_value_the_database_refuses_is_not_retried() -> None:
    result = internal.apply(args=["data"])
    assert isinstance(result.result, DataError)
    assert calls == ["data"]


def test_enqueue_committed_sends_each_piece_in_order() -> None:
    sent: list[int] = []
    assert enqueue_committed([3, 1, 2], sent.append) == 3
    assert sent == [3, 1, 2]
    assert enqueue_committed([], sent.append) == 0
