from __future__ import annotations

import json

import pytest

from tracker.core.status import (
    FINAL_ORDER_STATUSES,
    FINAL_REFILL_STATUSES,
    RAW_STATUS_MAX_LENGTH,
    OrderStatus,
    RefillStatus,
    clean_raw_status,
    normalize_order_status,
    normalize_refill_status,
)
from tracker.apiv2.parsing import parse_refill_status, parse_refill_status_multi, parse_status
from tracker.apiv2.types import ItemError, OrderReport, RefillReport


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Pending", OrderStatus.PENDING),
        ("pending", OrderStatus.PENDING),
        ("Processing", OrderStatus.PROCESSING),
        ("In progress", OrderStatus.IN_PROGRESS),
        ("In Progress", OrderStatus.IN_PROGRESS),
        ("inprogress", OrderStatus.IN_PROGRESS),
        ("in_progress", OrderStatus.IN_PROGRESS),
        ("IN-PROGRESS ", OrderStatus.IN_PROGRESS),
        ("Completed", OrderStatus.COMPLETED),
        ("Complete", OrderStatus.COMPLETED),
        ("Partial", OrderStatus.PARTIAL),
        ("Canceled", OrderStatus.CANCELED),
        ("Cancelled", OrderStatus.CANCELED),
        ("Refunded", OrderStatus.CANCELED),
        ("Teleported", OrderStatus.UNKNOWN),
        ("", OrderStatus.UNKNOWN),
    ],
)
def test_order_status_spellings(raw: str, expected: OrderStatus) -> None:
    assert normalize_order_status(raw) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Pending", RefillStatus.PENDING),
        ("In progress", RefillStatus.IN_PROGRESS),
        ("in_progress", RefillStatus.IN_PROGRESS),
        ("Processing", RefillStatus.IN_PROGRESS),
        ("Completed", RefillStatus.COMPLETED),
        ("Complete", RefillStatus.COMPLETED),
        ("Rejected", RefillStatus.REJECTED),
        ("Canceled", RefillStatus.CANCELED),
        ("Cancelled", RefillStatus.CANCELED),
        # The MSM "SMM Script" panels' refill states: Pending, Refilling, Completed,
        # Rejected, Error (the refill failed; nothing more happens to it).
        ("Refilling", RefillStatus.IN_PROGRESS),
        ("Error", RefillStatus.REJECTED),
        ("Partial", RefillStatus.UNKNOWN),
        ("Whatever", RefillStatus.UNKNOWN),
    ],
)
def test_refill_status_spellings(raw: str, expected: RefillStatus) -> None:
    assert normalize_refill_status(raw) is expected


@pytest.mark.parametrize("raw", ["Refunded", "In Progress", "Teleported", "cancelled"])
def test_parsed_order_keeps_the_raw_spelling(raw: str) -> None:
    report = parse_status(json.dumps({"status": raw}))
    assert isinstance(report, OrderReport)
    assert report.raw_status == raw
    assert report.status is normalize_order_status(raw)


def test_a_raw_status_is_stored_without_control_characters_and_within_its_column() -> None:
    odd = "In progress\x00 <b>" + "x" * 200
    report = parse_status(json.dumps({"status": odd}))
    assert isinstance(report, OrderReport)
    assert report.status is OrderStatus.UNKNOWN
    assert report.raw_status == clean_raw_status(odd)
    assert report.raw_status is not None
    assert "\x00" not in report.raw_status
    assert len(report.raw_status) == RAW_STATUS_MAX_LENGTH
    assert report.raw_status.startswith("In progress  <b>x")
    refill = parse_refill_status(json.dumps({"status": "Done\n\tok"}))
    assert refill.raw_status == "Done ok"  # type: ignore[union-attr]


def test_unknown_refill_status_keeps_raw() -> None:
    report = parse_refill_status('{"status": "Awaiting moderation"}')
    assert report == RefillReport(RefillStatus.UNKNOWN, "Awaiting moderation")


def test_a_refill_in_error_is_rejected_but_an_error_envelope_is_no_status() -> None:
    # The MSM "SMM Script" panels' failed refill: a status like any other, and final.
    assert parse_refill_status('{"status": "Error"}') == RefillReport(RefillStatus.REJECTED, "Error")
    assert parse_refill_status_multi('[{"refill": 7, "status": "Error"}]') == {
        "7": RefillReport(RefillStatus.REJECTED, "Error")
    }
    # SmartPanel-style {"status": "error", "message": ...}: the call's error, not the
    # refill's state (a transient one must not end the refill as rejected).
    envelope = '{"status": "error", "message": "Refill not found"}'
    assert parse_refill_status(envelope) == ItemError("Refill not found")
    assert parse_refill_status_multi('[{"refill": 7, "status": "error", "message": "Try later"}]') == {
        "7": ItemError("Try later")
    }


def test_unknown_and_in_flight_statuses_are_not_final() -> None:
    assert OrderStatus.UNKNOWN not in FINAL_ORDER_STATUSES
    assert OrderStatus.IN_PROGRESS not in FINAL_ORDER_STATUSES
    assert OrderStatus.NOT_FOUND in FINAL_ORDER_STATUSES
    assert RefillStatus.UNKNOWN not in FINAL_REFILL_STATUSES
    assert RefillStatus.REJECTED in FINAL_REFILL_STATUSES
