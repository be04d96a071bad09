"""What the free-text messages of API v2 providers mean.

Providers answer errors as ``{"error": "<free text>"}`` and every panel words them a little
differently. All matching of those words lives here, so the worker, the refill retry task
and the client agree on one reading. Matching is done on a *squashed* message: lower case,
every run of non-alphanumeric characters turned into one space ("Incorrect order-ID!" ->
"incorrect order id"). Unrecognised wording always falls through to the most cautious
class (``ProviderRefused`` / ``RefillRefusal.OTHER``), never to an exception.
"""

from __future__ import annotations

import re
from enum import StrEnum

from tracker.core.refills import AttemptOutcome
from tracker.apiv2.errors import (
    IncorrectRequest,
    InsecureProviderURL,
    InsufficientFunds,
    InvalidKey,
    NotSent,
    ProviderError,
    ProviderRefused,
    ProviderRejected,
    RateLimited,
    UnexpectedShape,
    UnusableRefillId,
)


def _lowercase_words(message: str) -> str:
    """Lower-case words of letters and digits, one space apart: "Incorrect order-ID!" ->
    "incorrect order id". Word boundaries survive: the patterns below match on them."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", message.lower()).split())


def _matches_any(patterns: tuple[re.Pattern[str], ...], message: str) -> bool:
    squashed = _lowercase_words(message)
    return any(pattern.search(squashed) for pattern in patterns)


def _compile(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(pattern) for pattern in patterns)


_NOT_FOUND = _compile(
    r"\b(incorrect|invalid|wrong|unknown|bad) (order|refill) ?id\b",
    r"\b(incorrect|invalid|wrong|unknown|bad) (order|refill)$",
    r"\b(order|refill)( ?id)? (is |was )?not found\b",
    r"\b(order|refill)( ?id)? (does not|doesn t|do not|don t) exists?\b",
    r"\bno such (order|refill)\b",
)


def means_not_found(message: str) -> bool:
    """True when the message says the order or refill ID does not exist at the provider.

    Recognised: "Incorrect order ID", "Order not found", "Incorrect refill ID",
    "Refill not found", "invalid order id", "Order ID not found", "Order does not exist",
    "No such order" (any case and punctuation).
    """
    return _matches_any(_NOT_FOUND, message)


def refuses_batch_form(error: ProviderError) -> bool:
    """Whether a failed batch call (``orders=`` / ``refills=``) may mean the panel does not
    read that form at all: "incorrect request", a shape no batch answer has, or a
    top-level "not found" for the whole batch. The MSM "SMM Script" panels read only
    ``order``/``refill`` and so answer any batch ``{"error": "Order not found."}`` /
    ``{"error": "Refill not found"}``. Only meaningful while the batch form is unproven:
    from a panel whose batches worked, the same answer is a failure like any other."""
    if isinstance(error, IncorrectRequest | UnexpectedShape):
        return True
    return (
        isinstance(error, ProviderRejected)
        and not isinstance(error, InvalidKey | InsufficientFunds)
        and means_not_found(error.provider_message)
    )


_INVALID_KEY = _compile(
    r"\b(invalid|incorrect|wrong|bad|unknown) (api )?key\b",
    r"\b(api )?key (is )?(invalid|incorrect|wrong|not valid|not found|disabled|inactive|"
    r"expired|revoked|blocked)\b",
    r"\buser (is )?(not found|inactive|disabled|blocked|banned|suspended)\b",
    r"\b(inactive|disabled|blocked|banned|suspended) (user|account)\b",
    r"\baccount (is )?(inactive|disabled|blocked|banned|suspended)\b",
)
_INSUFFICIENT_FUNDS = _compile(
    r"\bnot enough (funds|balance|money)\b",
    r"\binsufficient (funds|balance)\b",
    r"\b(low|negative) balance\b",
    r"\bbalance (is )?(too )?low\b",
)
# API v2's actions, as a panel may name the one it does not know ("Unknown action: refill").
_ACTION_NAMES = r"(add|status|services|refill|refill status|cancel|balance|orders|refills)"
_INCORRECT_REQUEST = _compile(
    # The whole message, nothing else: "Your request is invalid: order is not completed
    # yet" or "Refill request is not supported for this service" are refill refusals.
    r"^(incorrect|invalid|unknown|bad|wrong|unsupported) (request|action|method|param|params|parameter|"
    rf"parameters)( {_ACTION_NAMES})?$",
    # "Request Invalid" (BoostPanel), "This action is invalid" (SmartPanel)
    r"^(this |the )?(request|action|method) (is )?(invalid|incorrect|unknown|not supported|unsupported)$",
    r"\bmissing (required )?(param|params|parameter|parameters|field|fields|action)\b",
    r"\b(param|parameter|field) \w+ (is )?required\b",
    r"\brequired (param|parameter|field)\b",
)


def classify_top_level_error(message: str) -> type[ProviderRejected]:
    """Map a top-level ``{"error": message}`` to the exception class callers act on.

    ===================  ========================================================
    class                recognised wording (any case and punctuation)
    ===================  ========================================================
    InvalidKey           "Invalid API key", "Incorrect key", "API key is invalid",
                         "key disabled/expired/revoked", "User not found",
                         "User inactive", "account is suspended/blocked"
    InsufficientFunds    "Not enough funds", "insufficient balance/funds",
                         "low balance", "balance is too low"
    IncorrectRequest     the whole message: "Incorrect request", "Incorrect action",
                         "invalid action", "Request Invalid", "This action is
                         invalid", "unknown method", "Unknown action: refill";
                         or "missing parameter", "parameter X is required"
    ProviderRefused      anything else (refill refusals, add refusals, ...)
    ===================  ========================================================

    Checked in that order: a message naming both the key and the request blames the key,
    because pausing the provider is the safe reaction.
    """
    if _matches_any(_INVALID_KEY, message):
        return InvalidKey
    if _matches_any(_INSUFFICIENT_FUNDS, message):
        return InsufficientFunds
    if _matches_any(_INCORRECT_REQUEST, message):
        return IncorrectRequest
    return ProviderRefused


class RefillRefusal(StrEnum):
    RETRY_LATER = "retry_later"
    DISABLED = "disabled"
    NOT_FOUND = "not_found"
    ALREADY_ACTIVE = "already_active"
    WINDOW_EXPIRED = "window_expired"
    OTHER = "other"


_WINDOW_EXPIRED = _compile(
    r"\b(refill|guarantee|warranty)( (period|time|window|days))? (has |is )?"
    r"(expired|ended|over|closed|passed)\b",
    r"\b(guarantee|warranty|refill period)\b.*\b(expired|ended)\b",
    r"\bexpired (refill|guarantee|warranty)\b",
)
_ALREADY_ACTIVE = _compile(
    r"\brefill\b.*\balready\b",
    r"\balready\b.*\brefill",
    r"\bactive refill\b",
    r"\brefill (is )?(in progress|pending|processing|active)\b",
)
_RETRY_LATER = _compile(
    r"\btoo (early|soon)\b",
    r"\bavailable (after|in|from|on)\b",
    r"\bnot (yet )?(completed|complete|finished)\b",
    r"\bactive order\b",
    r"\btry (again )?later\b",
    r"\b(please )?wait (until|for)\b",
    r"\bnot available yet\b",
    r"\b(order|it) is (still )?(in progress|processing|pending)\b",
)
_DISABLED = _compile(
    r"\brefills?( requests?)? (is |are )?(disabled|unavailable|not (available|allowed|supported|enabled|possible))\b",
    r"\bno refill\b",
    r"\bnon refill\b",
    r"\bnot refillable\b",
    r"\b(does not|doesn t) (support|have) refill\b",
)


def classify_refill_refusal(message: str) -> RefillRefusal:
    """Say what a refused ``refill`` request means for the refill retry task.

    ===============  ============================================================
    result           recognised wording (any case and punctuation)
    ===============  ============================================================
    NOT_FOUND        everything ``means_not_found`` accepts ("Incorrect order ID",
                     "Order not found", "Refill not found", ...)
    WINDOW_EXPIRED   "Refill period expired", "Guarantee expired", "refill time is
                     over", "warranty has ended"
    ALREADY_ACTIVE   "Refill already requested", "active refill", "refill is already
                     in progress", "You already have a refill" (one refill in flight)
    RETRY_LATER      "too early", "Refill is available after 24 hours", "not
                     completed", "Order is not completed yet", "You have active order
                     with this link", "try again later", "please wait until",
                     "not available yet"
    DISABLED         "Refill is disabled", "Refill not available for this service",
                     "Refill request is not supported", "No refill", "service
                     does not support refill"
    OTHER            anything else
    ===============  ============================================================

    Checked top to bottom. RETRY_LATER comes before DISABLED so "refill not available
    yet" means later, not never; ALREADY_ACTIVE comes before RETRY_LATER so a refill in
    flight is not requested again as if nothing had happened.
    """
    if means_not_found(message):
        return RefillRefusal.NOT_FOUND
    for patterns, refusal in (
        (_WINDOW_EXPIRED, RefillRefusal.WINDOW_EXPIRED),
        (_ALREADY_ACTIVE, RefillRefusal.ALREADY_ACTIVE),
        (_RETRY_LATER, RefillRefusal.RETRY_LATER),
        (_DISABLED, RefillRefusal.DISABLED),
    ):
        if _matches_any(patterns, message):
            return refusal
    return RefillRefusal.OTHER


# What a failed ``refill`` call means for the attempt (core.refills decides what follows).
_REFUSALS = {
    RefillRefusal.RETRY_LATER: AttemptOutcome.RETRY_LATER,
    RefillRefusal.DISABLED: AttemptOutcome.DISABLED,
    RefillRefusal.NOT_FOUND: AttemptOutcome.NOT_FOUND,
    RefillRefusal.ALREADY_ACTIVE: AttemptOutcome.ALREADY_ACTIVE,
    RefillRefusal.WINDOW_EXPIRED: AttemptOutcome.WINDOW_EXPIRED,
    RefillRefusal.OTHER: AttemptOutcome.REFUSED,
}


def outcome_of_error(error: ProviderError) -> AttemptOutcome:
    """Classify a failed ``refill`` call; refusal wording is read by
    ``classify_refill_refusal``, nowhere else, and first: a wording it knows decides even
    when the message was read as an incorrect request (giving up on a refill that is
    only early would be the costly mistake)."""
    if isinstance(error, RateLimited):
        return AttemptOutcome.RATE_LIMITED
    if isinstance(error, NotSent | InsecureProviderURL):
        return AttemptOutcome.NOT_SENT
    if isinstance(error, UnusableRefillId):
        return AttemptOutcome.BAD_REFILL_ID
    if isinstance(error, InvalidKey):
        return AttemptOutcome.KEY_REJECTED
    if isinstance(error, ProviderRejected):
        refusal = classify_refill_refusal(error.provider_message)
        if refusal is RefillRefusal.OTHER and isinstance(error, IncorrectRequest):
            return AttemptOutcome.BAD_REQUEST
        return _REFUSALS[refusal]
    return AttemptOutcome.NO_ANSWER
