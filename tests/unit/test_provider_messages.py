from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracker.apiv2.messages import (
    RefillRefusal,
    classify_refill_refusal,
    classify_top_level_error,
    means_not_found,
    outcome_of_error,
)
from tracker.apiv2.parsing import parse_refill
from tracker.core.refills import AttemptOutcome
from tracker.apiv2.errors import (
    IncorrectRequest,
    InsufficientFunds,
    InvalidKey,
    ProviderRefused,
    ProviderRejected,
)
from tracker.apiv2.types import ItemError

REAL_PANELS = Path(__file__).resolve().parent.parent / "fixtures" / "real_panels"


@pytest.mark.parametrize(
    "message",
    [
        "Incorrect order ID",
        "incorrect order id",
        "Incorrect order ID.",
        "Order not found",
        "order not found!",
        "Incorrect refill ID",
        "Refill not found",
        "invalid order id",
        "Invalid order_id",
        "Order ID not found",
        "Order does not exist",
        "No such order",
    ],
)
def test_means_not_found(message: str) -> None:
    assert means_not_found(message)
    assert ItemError(message).means_not_found


@pytest.mark.parametrize(
    "message",
    [
        "Incorrect request",
        "User not found",
        "Invalid API key",
        "Not enough funds",
        "Order is not completed yet",
        "Refill is disabled",
        "",
    ],
)
def test_does_not_mean_not_found(message: str) -> None:
    assert not means_not_found(message)
    assert not ItemError(message).means_not_found


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Invalid API key", InvalidKey),
        ("Incorrect key", InvalidKey),
        ("incorrect api key.", InvalidKey),
        ("API key is invalid", InvalidKey),
        ("The API key is disabled", InvalidKey),
        ("User not found", InvalidKey),
        ("User inactive", InvalidKey),
        ("user is inactive", InvalidKey),
        ("Account is suspended", InvalidKey),
        ("Not enough funds", InsufficientFunds),
        ("Not enough funds on balance", InsufficientFunds),
        ("Insufficient balance", InsufficientFunds),
        ("insufficient funds", InsufficientFunds),
        ("Incorrect request", IncorrectRequest),
        ("Incorrect action", IncorrectRequest),
        ("invalid action", IncorrectRequest),
        ("Missing parameter", IncorrectRequest),
        ("missing required parameter: link", IncorrectRequest),
        ("Parameter link is required", IncorrectRequest),
        # BoostPanel (CodeIgniter) for an action it does not have (refill, cancel), and
        # SmartPanel's wording of the same.
        ("Request Invalid", IncorrectRequest),
        ("This action is invalid", IncorrectRequest),
        ("Action not supported", IncorrectRequest),
        ("Incorrect order ID", ProviderRefused),
        ("Refill is disabled", ProviderRefused),
        ("Quantity less than minimal 50", ProviderRefused),
        ("something went wrong", ProviderRefused),
    ],
)
def test_classify_top_level_error(message: str, expected: type[ProviderRejected]) -> None:
    assert classify_top_level_error(message) is expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Refill is too early", RefillRefusal.RETRY_LATER),
        ("Too early for refill", RefillRefusal.RETRY_LATER),
        ("Refill is available after 24 hours", RefillRefusal.RETRY_LATER),
        ("Order not completed", RefillRefusal.RETRY_LATER),
        ("Order is not completed yet", RefillRefusal.RETRY_LATER),
        ("You have active order with this link. Please wait", RefillRefusal.RETRY_LATER),
        ("Please try again later", RefillRefusal.RETRY_LATER),
        ("Refill is not available yet", RefillRefusal.RETRY_LATER),
        ("Refill already requested", RefillRefusal.ALREADY_ACTIVE),
        ("You already have an active refill", RefillRefusal.ALREADY_ACTIVE),
        ("Active refill exists for this order", RefillRefusal.ALREADY_ACTIVE),
        ("Refill is already in progress", RefillRefusal.ALREADY_ACTIVE),
        ("Refill is disabled", RefillRefusal.DISABLED),
        ("Refill not available for this service", RefillRefusal.DISABLED),
        ("No refill", RefillRefusal.DISABLED),
        ("This service has no refill", RefillRefusal.DISABLED),
        ("Refill period expired", RefillRefusal.WINDOW_EXPIRED),
        ("Guarantee expired", RefillRefusal.WINDOW_EXPIRED),
        ("The guarantee period for this order has expired", RefillRefusal.WINDOW_EXPIRED),
        ("Refill time is over", RefillRefusal.WINDOW_EXPIRED),
        ("Incorrect order ID", RefillRefusal.NOT_FOUND),
        ("Order not found", RefillRefusal.NOT_FOUND),
        ("Refill not found", RefillRefusal.NOT_FOUND),
        ("Service is under maintenance", RefillRefusal.OTHER),
        ("", RefillRefusal.OTHER),
    ],
)
def test_classify_refill_refusal(message: str, expected: RefillRefusal) -> None:
    assert classify_refill_refusal(message) is expected


def test_refusal_classes_ignore_case_and_punctuation() -> None:
    assert classify_refill_refusal("REFILL-IS-DISABLED!!!") is RefillRefusal.DISABLED
    assert classify_top_level_error("  invalid   API-key  ") is InvalidKey


# Refill refusals that mention "request": once read as an incorrect request, which gives
# the refill up (BAD_REQUEST) where it is worth asking again later, or marks the order not
# refillable.
REFILL_REFUSALS_NAMING_THE_REQUEST = [
    ("Your request is invalid: order is not completed yet", RefillRefusal.RETRY_LATER, AttemptOutcome.RETRY_LATER),
    ("Refill request is not supported for this service", RefillRefusal.DISABLED, AttemptOutcome.DISABLED),
    ("Invalid request: refill is not available for this service", RefillRefusal.DISABLED, AttemptOutcome.DISABLED),
    ("Request is invalid, the order is still in progress", RefillRefusal.RETRY_LATER, AttemptOutcome.RETRY_LATER),
]


@pytest.mark.parametrize(("message", "refusal", "outcome"), REFILL_REFUSALS_NAMING_THE_REQUEST)
def test_a_refill_refusal_naming_the_request_is_no_incorrect_request(
    message: str, refusal: RefillRefusal, outcome: AttemptOutcome
) -> None:
    assert classify_top_level_error(message) is ProviderRefused
    assert classify_refill_refusal(message) is refusal
    with pytest.raises(ProviderRejected) as refused:
        parse_refill(json.dumps({"error": message}))
    assert outcome_of_error(refused.value) is outcome


@pytest.mark.parametrize(("message", "refusal", "outcome"), REFILL_REFUSALS_NAMING_THE_REQUEST)
def test_the_refill_reading_has_the_first_look_at_a_refill_refusal(
    message: str, refusal: RefillRefusal, outcome: AttemptOutcome
) -> None:
    """Whatever class the message was given, a wording the refill reading knows decides."""
    assert outcome_of_error(IncorrectRequest("refill", message)) is outcome


@pytest.mark.parametrize(
    "message",
    [
        "Request Invalid",  # BoostPanel (CodeIgniter), for an action it does not have
        "This action is invalid",  # SmartPanel
        "Incorrect request",  # the seed docs' panels, the MSM family
        "Incorrect request.",
        "Invalid action",
        "Incorrect action",
        "Unknown action",
        "Unknown action: refill_status",
        "Action not supported",
        "The action is not supported",
        "Invalid request",
        "Bad request",
        "Unsupported method",
    ],
)
def test_a_panels_own_incorrect_request_is_still_one(message: str) -> None:
    assert classify_top_level_error(message) is IncorrectRequest
    assert outcome_of_error(IncorrectRequest("refill", message)) is AttemptOutcome.BAD_REQUEST


def test_boostpanels_captured_answer_to_refill_is_a_bad_request() -> None:
    body = (REAL_PANELS / "boostpanel_refill.txt").read_text(encoding="utf-8")
    with pytest.raises(IncorrectRequest) as refused:
        parse_refill(body)
    assert refused.value.provider_message == "Request Invalid"
    assert outcome_of_error(refused.value) is AttemptOutcome.BAD_REQUEST
