"""Normalisation of the status strings providers send.

Providers spell the same status many ways ("In progress", "In Progress", "inprogress",
"in_progress"; "Canceled", "Cancelled", "Refunded"). We keep the raw spelling and map it
onto one canonical vocabulary. Anything unrecognised is ``Unknown``, never an exception:
a new spelling from a provider must not stop tracking.
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum


class OrderStatus(StrEnum):
    PENDING = "Pending"
    PROCESSING = "Processing"
    IN_PROGRESS = "In progress"
    COMPLETED = "Completed"
    PARTIAL = "Partial"
    CANCELED = "Canceled"
    UNKNOWN = "Unknown"
    # Never sent by a provider: the tracker concludes it after K consecutive
    # "Incorrect order ID" answers.
    NOT_FOUND = "Not found"


FINAL_ORDER_STATUSES: frozenset[OrderStatus] = frozenset(
    {OrderStatus.COMPLETED, OrderStatus.PARTIAL, OrderStatus.CANCELED, OrderStatus.NOT_FOUND}
)


# Statuses that end delivery and open the refill guarantee window.
COMPLETION_STATUSES: frozenset[OrderStatus] = frozenset({OrderStatus.COMPLETED, OrderStatus.PARTIAL})


class RefillStatus(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "In progress"
    COMPLETED = "Completed"
    REJECTED = "Rejected"
    CANCELED = "Canceled"
    UNKNOWN = "Unknown"
    # The provider answered "Refill not found" / "Incorrect refill ID" K times in a row.
    NOT_FOUND = "Not found"


FINAL_REFILL_STATUSES: frozenset[RefillStatus] = frozenset(
    {RefillStatus.COMPLETED, RefillStatus.REJECTED, RefillStatus.CANCELED, RefillStatus.NOT_FOUND}
)


@functools.lru_cache(maxsize=1024)
def _letters_only(raw: str) -> str:
    """Lower-case and drop everything but letters: "In_Progress " -> "inprogress".
    Cached: a provider's answers repeat a handful of spellings thousands of times."""
    return re.sub(r"[^a-z]", "", raw.lower())


# The widths of the raw_status and currency columns.
RAW_STATUS_MAX_LENGTH = 64
CURRENCY_MAX_LENGTH = 8
# Control characters (PostgreSQL refuses NUL) and lone surrogates (from a JSON "\ud800").
_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]+")


@functools.lru_cache(maxsize=1024)
def clean_text(text: str, max_length: int) -> str:
    """Provider text as we store it: unstorable characters become spaces, and it is cut to
    the column's width, so one odd answer cannot make a whole batch's write fail."""
    return _UNSTORABLE.sub(" ", text)[:max_length]


def clean_raw_status(raw: str) -> str:
    return clean_text(raw, RAW_STATUS_MAX_LENGTH)


_ORDER_SPELLINGS: dict[str, OrderStatus] = {
    "pending": OrderStatus.PENDING,
    "awaiting": OrderStatus.PENDING,
    "queued": OrderStatus.PENDING,
    "processing": OrderStatus.PROCESSING,
    "inprogress": OrderStatus.IN_PROGRESS,
    "inprocess": OrderStatus.IN_PROGRESS,
    "active": OrderStatus.IN_PROGRESS,
    "running": OrderStatus.IN_PROGRESS,
    "completed": OrderStatus.COMPLETED,
    "complete": OrderStatus.COMPLETED,
    "done": OrderStatus.COMPLETED,
    "success": OrderStatus.COMPLETED,
    "partial": OrderStatus.PARTIAL,
    "partiallycompleted": OrderStatus.PARTIAL,
    "partialrefund": OrderStatus.PARTIAL,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "refunded": OrderStatus.CANCELED,
    "refund": OrderStatus.CANCELED,
}

_REFILL_SPELLINGS: dict[str, RefillStatus] = {
    "pending": RefillStatus.PENDING,
    "awaiting": RefillStatus.PENDING,
    "queued": RefillStatus.PENDING,
    "processing": RefillStatus.IN_PROGRESS,
    "inprogress": RefillStatus.IN_PROGRESS,
    "inprocess": RefillStatus.IN_PROGRESS,
    "refilling": RefillStatus.IN_PROGRESS,
    "completed": RefillStatus.COMPLETED,
    "complete": RefillStatus.COMPLETED,
    "done": RefillStatus.COMPLETED,
    "success": RefillStatus.COMPLETED,
    "rejected": RefillStatus.REJECTED,
    "refused": RefillStatus.REJECTED,
    "declined": RefillStatus.REJECTED,
    # The MSM "SMM Script" panels' last state for a refill that failed.
    "error": RefillStatus.REJECTED,
    "canceled": RefillStatus.CANCELED,
    "cancelled": RefillStatus.CANCELED,
}


def normalize_order_status(raw: str) -> OrderStatus:
    return _ORDER_SPELLINGS.get(_letters_only(raw), OrderStatus.UNKNOWN)


def normalize_refill_status(raw: str) -> RefillStatus:
    return _REFILL_SPELLINGS.get(_letters_only(raw), RefillStatus.UNKNOWN)
