"""Tolerant, typed parsing of API v2 answers (pure: text in, typed values out).

One function per action. Each takes the decoded body text, or what
``strip_php_notices`` made of it (the client reads each body once, to log and count what
it salvaged, and hands that on: the body is not scanned again), and returns typed
results, or raises:

- ``NotJSON``: the body is not one JSON document (HTML, a Cloudflare page, truncated
  JSON, a PHP fatal error). PHP deprecations, notices and warnings around the JSON (a
  panel in debug mode, under PHP's default settings) are removed first
  (``strip_php_notices``, see ``tracker.apiv2.php_noise``): PHP carries on after them, so
  the one JSON document among them is the panel's real answer. It is *not* found by
  looking for the first ``{``: every block around it must be a diagnostic PHP carries on
  after, or the body is refused, and ``NotJSON.block`` names the block that decided.
  Leading/trailing whitespace and a UTF-8 BOM are fine.
- ``UnexpectedShape``: valid JSON that is not what the action answers with, including an
  ID in a batch answer that is not a valid ID.
- a ``ProviderRejected`` subclass (chosen by ``classify_top_level_error``) for a top-level
  ``{"error": "..."}``. Exception: for the single-ID ``status`` and ``refill_status`` a
  top-level error that means "not found" is returned as an ``ItemError``, the same value
  a batch answer gives for that ID, so callers count not-found answers one way.

What is tolerated, because real providers do it: numbers as JSON numbers or strings
(``"157"``/``157``, ``"0.27819"``/``0.27819``; ``""`` and ``null`` are ``None``); money is
parsed straight into ``Decimal`` (``parse_float=Decimal``), never through a float; status
spellings (see ``tracker.core.status``); a missing ``currency``; a negative ``remains``
(kept: the domain decides what it means); refill IDs as ``1`` or ``"1"`` (always ``"1"``);
``refill_status`` answered as ``{"status": ...}`` or ``{"refill": ...}``; batch answers as
an object keyed by ID or as a list of objects carrying the ID; errors nested in batch
entries; ``desc`` and ``cancel`` present or absent in the catalog; ``"error": null``.

Inside a batch answer, one unreadable *entry* (say ``"remains": "N/A"``) becomes an
``ItemError`` for that ID instead of failing the batch: the other IDs are good, and
failing them all would stall every order that shares a batch with the odd one.

Every message and excerpt stored in an exception or ``ItemError`` goes through ``redact``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from tracker.core.money import MONEY_LIMIT, to_stored_scale
from tracker.core.status import (
    OrderStatus,
    RefillStatus,
    CURRENCY_MAX_LENGTH,
    clean_raw_status,
    clean_text,
    normalize_order_status,
    normalize_refill_status,
)
from tracker.apiv2.errors import NotJSON, ProviderRejected, UnexpectedShape, UnusableRefillId
from tracker.apiv2.messages import classify_top_level_error, means_not_found
# Re-exported: the client and older callers read PHP noise through this module.
from tracker.apiv2.php_noise import Salvaged as Salvaged, names_a_diagnostic, strip_php_notices as strip_php_notices
from tracker.apiv2.redact import excerpt, redact
from tracker.apiv2.types import (
    Balance,
    CancelAccepted,
    CancelResult,
    CatalogService,
    ItemError,
    OrderReport,
    OrderResult,
    RefillCreation,
    RefillReport,
    RefillResult,
)

T = TypeVar("T")
K = TypeVar("K")

_MAX_REASON = 120


class _BadValue(Exception):
    """A value we cannot read. Becomes ``UnexpectedShape``, or an ``ItemError`` in a batch."""


class _UnusableRefillId(_BadValue):
    """A refill ID is there, but not one we can store and poll: ``UnusableRefillId``."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """One body being parsed: knows how to build key-free errors about it."""

    action: str
    text: str
    secrets: tuple[str, ...]

    def _clean(self, message: str) -> str:
        cleaned = redact(message, self.secrets)
        return cleaned if len(cleaned) <= _MAX_REASON else cleaned[: _MAX_REASON - 1] + "…"

    def shape_error(self, reason: str) -> UnexpectedShape:
        return UnexpectedShape(self.action, self._clean(reason), excerpt(self.text, self.secrets))

    def item_error(self, message: str) -> ItemError:
        return ItemError(self._clean(message))

    def rejected(self, message: str) -> ProviderRejected:
        return classify_top_level_error(message)(self.action, self._clean(message))

    def read(self, reader: Callable[[object], T], value: object, what: str) -> T:
        try:
            return reader(value)
        except _BadValue as bad:
            reason = f"{what}: {bad}"
            unusable = isinstance(bad, _UnusableRefillId)
        # Outside the except block: the unredacted _BadValue must not ride along as context.
        if unusable:
            raise UnusableRefillId(self.action, self._clean(reason), excerpt(self.text, self.secrets))
        raise self.shape_error(reason)

    def read_entry(self, reader: Callable[[object], K], value: object) -> K | ItemError:
        try:
            return reader(value)
        except _BadValue as bad:
            return self.item_error(f"unreadable answer: {bad}")


# --- loading -------------------------------------------------------------------------

# What the parse functions take: a body as it came, or as ``strip_php_notices`` read it.
Body = str | Salvaged


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number we accept")


def _why_not_json(body: str, error: Exception) -> str:
    # Left as it came by ``strip_php_notices`` (nothing before the JSON is a diagnostic it
    # knows): a PHP diagnostic somewhere in it still deserves its name.
    if names_a_diagnostic(body):
        return "PHP diagnostic in a form not recognised (not salvaged)"
    if body.startswith("<"):
        return "HTML instead of JSON"
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON ({error.msg} at line {error.lineno} column {error.colno})"
    if isinstance(error, RecursionError):
        return "JSON nested too deeply"
    return f"invalid JSON ({error})"


def _salvaged(text: Body, secrets: Sequence[str]) -> Salvaged:
    return text if isinstance(text, Salvaged) else strip_php_notices(text, secrets)


def _load(action: str, text: Body, secrets: Sequence[str]) -> tuple[_Answer, object]:
    """The answer's JSON, PHP diagnostics around it read first (unless they were)."""
    salvaged = _salvaged(text, secrets)
    answer = _Answer(action, salvaged.text, tuple(secrets))
    if salvaged.refusal is not None:
        raise NotJSON(action, salvaged.refusal, excerpt(salvaged.text, answer.secrets), block=salvaged.block)
    body = salvaged.text.strip().lstrip("\ufeff").strip()
    if not body:
        raise NotJSON(action, "empty body", "")
    try:
        return answer, json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        reason = _why_not_json(body, error)
    # Raised outside the except block: the decode error holds the whole body (``doc``),
    # which must not travel along as ``__context__``.
    raise NotJSON(action, reason, excerpt(salvaged.text, answer.secrets))


def _error_message(value: object) -> str | None:
    """The message of an ``error`` field; None when the field means "no error"."""
    if value is None or value is False:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict):
        inner = value.get("message", value.get("error"))
        if isinstance(inner, str) and inner.strip():
            return inner.strip()
    return json.dumps(value, default=str)


def _top_level_error(data: object) -> str | None:
    if isinstance(data, dict) and "error" in data:
        return _error_message(data["error"])
    return None


def _raise_top_level_error(answer: _Answer, data: object) -> None:
    message = _top_level_error(data)
    if message is not None:
        raise answer.rejected(message)


def top_level_error_message(text: Body) -> str | None:
    """The top-level ``{"error": ...}`` message of a body, or None (also for non-JSON).
    PHP diagnostics around it are read as ``_load`` reads them."""
    salvaged = _salvaged(text, ())
    if salvaged.refusal is not None:
        return None
    try:
        data = json.loads(salvaged.text.strip().lstrip("\ufeff"), parse_float=Decimal)
    except (ValueError, RecursionError):
        return None
    return _top_level_error(data)


# --- scalar readers (raise _BadValue) ------------------------------------------------

_INT_TEXT = re.compile(r"[+-]?\d{1,18}")
_DECIMAL_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")


def _is_blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# What the database columns hold: BIGINT, and NUMERIC(24, 8) for money. A value beyond
# them makes that one entry unreadable, instead of failing the write of a whole batch.
_INT_LIMIT = 2**63 - 1


def _decimal(value: object) -> Decimal | None:
    """Money, rounded to the places the database keeps: the state read back must equal
    the next identical answer, or every poll would record a change."""
    number = _any_decimal(value)
    if number is None:
        return None
    # Range first: rounding a huge number would overflow the decimal context.
    if abs(number) < MONEY_LIMIT:
        stored = to_stored_scale(number)
        if abs(stored) < MONEY_LIMIT:  # 9999999999999999.999999999 rounds up to the limit
            return stored
    raise _BadValue(f"number out of range: {value!r}")


def _any_decimal(value: object) -> Decimal | None:
    if type(value) is str:
        # The usual case first (panels send numbers as strings): the same outcome as the
        # general path below, with fewer checks per value.
        text = value.strip()
        if not text:
            return None
        if _DECIMAL_TEXT.fullmatch(text):
            return Decimal(text)
        raise _BadValue(f"not a number: {value!r}")
    if _is_blank(value):
        return None
    if isinstance(value, Decimal) and value.is_finite():
        return value  # parse_float=Decimal built it from the JSON text itself: exact
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value.strip()):
        return Decimal(value.strip())
    raise _BadValue(f"not a number: {value!r}")


def _int(value: object) -> int | None:
    if type(value) is str:
        # The usual case first, as in _any_decimal; anything but plain digits goes on below.
        text = value.strip()
        if not text:
            return None
        if _INT_TEXT.fullmatch(text):
            return int(text)
    if _is_blank(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > _INT_LIMIT:
            raise _BadValue(f"number out of range: {value!r}")
        return value
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    number = _any_decimal(value)  # "157.0" or 157.0 are still whole numbers
    if number is not None and number == number.to_integral_value() and number.adjusted() < 18:
        return int(number)
    raise _BadValue(f"not a whole number: {value!r}")


def _positive_id(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value.strip()) > 0:
        return int(value.strip())
    raise _BadValue(f"not a positive integer: {value!r}")


# Refill IDs are stored in a 64-character column and sent back comma-separated in
# ``refills=``: anything longer, or with other characters, could be neither.
REFILL_ID_MAX_LENGTH = 64
_USABLE_REFILL_ID = re.compile(r"[A-Za-z0-9._:-]{1,%d}" % REFILL_ID_MAX_LENGTH)


def _refill_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
    else:
        raise _BadValue(f"not a refill ID: {value!r}")
    if not _USABLE_REFILL_ID.fullmatch(text):
        # The ID whole, and last: the error redacts it before it shortens the message (cut
        # here, a key in it could show its first characters).
        raise _UnusableRefillId(
            f"unusable refill ID (at most {REFILL_ID_MAX_LENGTH} letters, digits or ._:-): {text!r}"
        )
    return text


def _text(value: object) -> str | None:
    if type(value) is str:
        return value.strip() or None
    if _is_blank(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return str(value)
    raise _BadValue(f"not text: {value!r}")


def _currency(value: object) -> str | None:
    text = _text(value)
    return clean_text(text, CURRENCY_MAX_LENGTH) if text is not None else None


_TRUE = frozenset({"1", "true", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "no", "n", "off", ""})


def _flag(value: object) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _BadValue(f"not a yes/no flag: {value!r}")


def _raw_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


# --- entries (raise _BadValue) -------------------------------------------------------


def _field(entry: dict[str, object], name: str, reader: Callable[[object], T]) -> T:
    try:
        return reader(entry.get(name))
    except _BadValue as bad:
        raise _BadValue(f"{name}: {bad}") from None


def _order_report(entry: dict[str, object]) -> OrderResult:
    raw = entry.get("status")
    if not isinstance(raw, str) or not raw.strip():
        raise _BadValue(f"no status in {sorted(entry)}")
    status = normalize_order_status(raw)
    if status is OrderStatus.UNKNOWN and means_not_found(raw):
        return ItemError(raw.strip())
    return OrderReport(
        status=status,
        raw_status=clean_raw_status(raw),
        charge=_field(entry, "charge", _decimal),
        start_count=_field(entry, "start_count", _int),
        remains=_field(entry, "remains", _int),
        currency=_field(entry, "currency", _currency),
    )


def _order_entry(entry: object) -> OrderResult:
    if isinstance(entry, dict):
        message = _error_message(entry.get("error"))
        return ItemError(message) if message is not None else _order_report(entry)
    if isinstance(entry, str) and entry.strip():
        return ItemError(entry.strip())
    raise _BadValue(f"entry is {type(entry).__name__}")


def _refill_report(raw: str) -> RefillResult:
    status = normalize_refill_status(raw)
    if status is RefillStatus.UNKNOWN and means_not_found(raw):
        return ItemError(raw.strip())
    return RefillReport(status=status, raw_status=clean_raw_status(raw))


def _status_error_envelope(entry: dict[str, object]) -> str | None:
    """The message of ``{"status": "error", "message": "..."}``, the error form of
    SmartPanel-style panels: the call's error, not a state. None for anything else (the
    MSM panels' ``{"status": "Error"}``, with no message, is a refill's last state)."""
    status, message = entry.get("status"), entry.get("message")
    if isinstance(status, str) and status.strip().lower() == "error" and isinstance(message, str):
        return message.strip() or None
    return None


def _refill_status_entry(entry: object) -> RefillResult:
    """``"Completed"``, ``{"status": "Completed"}``, ``{"refill": 1, "status": {...}}``."""
    if isinstance(entry, str) and entry.strip():
        return _refill_report(entry)
    if isinstance(entry, dict):
        message = _error_message(entry.get("error")) or _status_error_envelope(entry)
        if message is not None:
            return ItemError(message)
        if "status" in entry:
            return _refill_status_entry(entry["status"])
    raise _BadValue(f"no refill status in {entry!r}")


def _refill_creation(entry: object) -> RefillCreation:
    """``1``, ``"1"``, ``{"refill": 1}``, ``{"order": 3, "refill": {"error": ...}}``."""
    if isinstance(entry, dict):
        message = _error_message(entry.get("error"))
        if message is not None:
            return ItemError(message)
        if "refill" in entry:
            return _refill_creation(entry["refill"])
        raise _BadValue(f"no refill in {sorted(entry)}")
    return _refill_id(entry)


def _cancel_entry(entry: object) -> CancelResult:
    """``1``, ``true``, ``{"order": 2, "cancel": 1}``, ``{"cancel": {"error": ...}}``."""
    if isinstance(entry, dict):
        message = _error_message(entry.get("error"))
        if message is not None:
            return ItemError(message)
        if "cancel" in entry:
            return _cancel_entry(entry["cancel"])
        raise _BadValue(f"no cancel in {sorted(entry)}")
    if entry is None:
        raise _BadValue("cancel is null")
    if entry is False or entry == 0 or entry == "0":
        return ItemError(f"cancel not accepted: {_raw_text(entry)}")
    return CancelAccepted(raw=_raw_text(entry))


def _service(item: object) -> CatalogService:
    if not isinstance(item, dict):
        raise _BadValue(f"entry is {type(item).__name__}")
    description_field = "desc" if "desc" in item else "description"
    return CatalogService(
        service_id=_field(item, "service", _positive_id),
        name=_field(item, "name", _text) or "",
        type=_field(item, "type", _text),
        category=_field(item, "category", _text),
        rate=_field(item, "rate", _decimal),
        min=_field(item, "min", _int),
        max=_field(item, "max", _int),
        refill=bool(_field(item, "refill", _flag)),
        cancel=_field(item, "cancel", _flag),
        description=_field(item, description_field, _text),
    )


# --- batch containers ----------------------------------------------------------------


def _id_entries(answer: _Answer, data: object, id_field: str) -> list[tuple[object, object]]:
    """(id, entry) pairs of an object keyed by ID or a list of objects carrying the ID."""
    if isinstance(data, dict):
        # ``"error": null`` next to the IDs means no error (checked by the caller).
        return [(key, entry) for key, entry in data.items() if key != "error"]
    if isinstance(data, list):
        pairs: list[tuple[object, object]] = []
        for item in data:
            if not isinstance(item, dict) or id_field not in item:
                raise answer.shape_error(f"list item without {id_field!r}: {item!r}")
            pairs.append((item[id_field], item))
        return pairs
    raise answer.shape_error(f"expected an object or a list, got {type(data).__name__}")


def _batch(
    answer: _Answer,
    data: object,
    id_field: str,
    read_id: Callable[[object], K],
    read_entry: Callable[[object], T],
) -> dict[K, T | ItemError]:
    _raise_top_level_error(answer, data)
    result: dict[K, T | ItemError] = {}
    for raw_id, entry in _id_entries(answer, data, id_field):
        entry_id = answer.read(read_id, raw_id, f"{id_field} ID")
        value = answer.read_entry(read_entry, entry)
        if isinstance(value, ItemError):  # the provider's own words may echo the key
            value = answer.item_error(value.message)
        result[entry_id] = value
    return result


def _object(answer: _Answer, data: object) -> dict[str, object]:
    if not isinstance(data, dict):
        raise answer.shape_error(f"expected an object, got {type(data).__name__}")
    return data


# --- one function per action ---------------------------------------------------------


def parse_services(text: Body, *, secrets: Sequence[str] = ()) -> list[CatalogService]:
    answer, data = _load("services", text, secrets)
    _raise_top_level_error(answer, data)
    if isinstance(data, dict):  # some panels key the catalog by service ID
        data = list(data.values())
    if not isinstance(data, list):
        raise answer.shape_error(f"expected a list, got {type(data).__name__}")
    return [answer.read(_service, item, f"service #{index}") for index, item in enumerate(data)]


def parse_add(text: Body, *, secrets: Sequence[str] = ()) -> int:
    answer, data = _load("add", text, secrets)
    _raise_top_level_error(answer, data)
    return answer.read(_positive_id, _object(answer, data).get("order"), "order")


def parse_status(text: Body, *, secrets: Sequence[str] = ()) -> OrderResult:
    return _status(*_load("status", text, secrets))


def _status(answer: _Answer, data: object) -> OrderResult:
    message = _top_level_error(data)
    if message is not None:
        if means_not_found(message):
            return answer.item_error(message)
        raise answer.rejected(message)
    result = answer.read(_order_entry, _object(answer, data), "status")
    return answer.item_error(result.message) if isinstance(result, ItemError) else result


def parse_status_multi(text: Body, *, secrets: Sequence[str] = ()) -> dict[int, OrderResult]:
    return _status_multi(*_load("status", text, secrets))


def _status_multi(answer: _Answer, data: object) -> dict[int, OrderResult]:
    return _batch(answer, data, "order", _positive_id, _order_entry)


def parse_status_one_of_multi(order_id: int) -> Callable[..., dict[int, OrderResult]]:
    """The parser for a multi status request that carried only ``order_id``. Some panels
    answer ``orders=<one id>`` like ``order=<id>``: the order's status object, or a
    top-level ``{"error": "Incorrect order ID"}``. That error is the order's not-found
    (an ``ItemError``), as in a batch answer; read as a failed call, it would count
    toward the provider's circuit and the order would never reach Not found."""

    def parse(text: Body, *, secrets: Sequence[str] = ()) -> dict[int, OrderResult]:
        answer, data = _load("status", text, secrets)
        if isinstance(data, dict) and not _is_id_keyed(data):
            message = _top_level_error(data)
            if message is not None or "status" in data:
                return {order_id: _status(answer, data)}
        return _status_multi(answer, data)

    return parse


def parse_refill(text: Body, *, secrets: Sequence[str] = ()) -> str:
    answer, data = _load("refill", text, secrets)
    _raise_top_level_error(answer, data)
    created = answer.read(_refill_creation, _object(answer, data), "refill")
    if isinstance(created, ItemError):
        raise answer.rejected(created.message)
    return created


def parse_refill_multi(text: Body, *, secrets: Sequence[str] = ()) -> dict[int, RefillCreation]:
    answer, data = _load("refill", text, secrets)
    return _batch(answer, data, "order", _positive_id, _refill_creation)


def _is_id_keyed(data: dict[str, Any]) -> bool:
    return bool(data) and all(key.strip().isdigit() for key in data)


def parse_refill_status(text: Body, *, secrets: Sequence[str] = ()) -> RefillResult:
    answer, data = _load("refill_status", text, secrets)
    message = _top_level_error(data)
    if message is not None:
        if means_not_found(message):
            return answer.item_error(message)
        raise answer.rejected(message)
    entry = _object(answer, data)
    if "status" not in entry and isinstance(entry.get("refill"), str):
        entry = {"status": entry["refill"]}  # seed 004 answers {"refill": "Completed"}
    result = answer.read(_refill_status_entry, entry, "refill_status")
    return answer.item_error(result.message) if isinstance(result, ItemError) else result


def parse_refill_status_multi(
    text: Body, *, secrets: Sequence[str] = ()
) -> dict[str, RefillResult]:
    answer, data = _load("refill_status", text, secrets)
    return _batch(answer, data, "refill", _refill_id, _refill_status_entry)


def parse_cancel(text: Body, *, secrets: Sequence[str] = ()) -> dict[int, CancelResult]:
    answer, data = _load("cancel", text, secrets)
    return _batch(answer, data, "order", _positive_id, _cancel_entry)


def parse_balance(text: Body, *, secrets: Sequence[str] = ()) -> Balance:
    answer, data = _load("balance", text, secrets)
    _raise_top_level_error(answer, data)
    fields = _object(answer, data)
    amount = answer.read(_decimal, fields.get("balance"), "balance")
    if amount is None:
        raise answer.shape_error("no balance")
    return Balance(amount=amount, currency=answer.read(_text, fields.get("currency"), "currency"))
