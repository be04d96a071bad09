"""Validation of provider order IDs given by the shop (task arguments, CLI, files).

An order ID is a positive integer that fits a 64-bit signed column. JSON clients send
numbers or digit strings; anything else is rejected with a reason, and the valid IDs of
the same call are still accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_ORDER_ID = 2**63 - 1
_SEPARATORS = re.compile(r"[\s,;]+")


class RefusedId(NamedTuple):
    # The value as people read it (the log, the CLI): strings in quotes.
    given: str
    reason: str
    # The value as the shop sent it, for a program to match (the task's result); ``given``
    # when the value is not echoed.
    value: int | float | str | None


@dataclass(slots=True)
class ParsedIds:
    valid: list[int] = field(default_factory=list)
    # In input order.
    rejected: list[RefusedId] = field(default_factory=list)
    duplicates: int = 0


# A refused value is named as given (in the log, the CLI and the task's result) only when
# it is short or a number: a long string given as an order ID may be a mistake that
# carries an API key, so it is named by its type and length alone. Strings are measured
# in characters, so the PHP kit (kit/php/TrackerKit.php) applies the same rule. A string
# of digits is named up to ECHOED_DIGITS characters, one more than the longest valid ID:
# a longer run of digits is no order ID, and may be a numeric secret.
ECHOED_LENGTH = 18  # of repr(), for a value that is not a string
ECHOED_CHARACTERS = 16
ECHOED_DIGITS = 20


def _describe(raw: object) -> str:
    if isinstance(raw, str):
        text = raw.strip()
        digits = text.isascii() and text.isdigit()
        if len(raw) <= ECHOED_CHARACTERS or (digits and len(raw) <= ECHOED_DIGITS):
            return repr(raw)
        return f"a string of {len(raw)} characters"
    text = repr(raw)
    if len(text) <= ECHOED_LENGTH or (isinstance(raw, int) and not isinstance(raw, bool)):
        return text if len(text) <= 40 else text[:37] + "..."
    try:
        size = len(raw)  # type: ignore[arg-type]
    except TypeError:
        return f"a {type(raw).__name__}"
    return f"a {type(raw).__name__} of {size} item{'' if size == 1 else 's'}"


def _refused(raw: object, reason: str) -> RefusedId:
    given = _describe(raw)
    value: int | float | str | None = given
    if raw is None or (isinstance(raw, int | float) and len(repr(raw)) <= 40):
        value = raw
    elif isinstance(raw, str) and given == repr(raw):  # named whole
        value = raw
    return RefusedId(given, reason, value)


def parse_order_id(raw: object) -> int:
    """One ID, or ValueError with a reason a shop owner understands."""
    if isinstance(raw, bool):
        raise ValueError("is a boolean, not an order ID")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if not text:
            raise ValueError("is empty")
        if not text.isascii() or not text.isdigit():
            raise ValueError("is not a positive whole number")
        if len(text) > 19:
            raise ValueError("is too large for an order ID")
        value = int(text)
    else:
        raise ValueError(f"has type {type(raw).__name__}; expected a number or a digit string")
    if value <= 0:
        raise ValueError("must be a positive number")
    if value > MAX_ORDER_ID:
        raise ValueError("is too large for an order ID")
    return value


def parse_order_ids(items: Iterable[object]) -> ParsedIds:
    """Validate many IDs; duplicates are folded into one."""
    parsed = ParsedIds()
    seen: set[int] = set()
    for raw in items:
        try:
            value = parse_order_id(raw)
        except ValueError as exc:
            parsed.rejected.append(_refused(raw, str(exc)))
            continue
        if value in seen:
            parsed.duplicates += 1
            continue
        seen.add(value)
        parsed.valid.append(value)
    return parsed


def split_id_text(text: str) -> list[str]:
    """Tokens of an ID list as found in a file: newlines, commas or spaces separate IDs;
    blank lines and ``#`` comments are ignored."""
    tokens: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        tokens.extend(token for token in _SEPARATORS.split(line) if token)
    return tokens


class NotTextError(ValueError):
    """An ID file that is not text (binary data, or not UTF-8)."""


def iter_id_tokens(chunks: Iterable[str], *, max_line: int = 1 << 20) -> Iterable[str]:
    """Tokens of an ID file read in chunks, with bounded memory whatever the file holds:
    a gigabyte without a newline is cut at separators instead of being held whole."""
    partial_line = ""
    # Inside a '#' comment whose line has not ended yet: skip until the next newline.
    skipping_comment = False
    for chunk in chunks:
        if "\x00" in chunk:
            raise NotTextError("the file contains NUL bytes: it looks binary, not a list of IDs")
        buffer = partial_line + chunk
        newline = buffer.rfind("\n")
        if newline >= 0:
            complete, buffer = buffer[: newline + 1], buffer[newline + 1 :]
            if skipping_comment:
                complete = complete.split("\n", 1)[1]
                skipping_comment = False
            yield from split_id_text(complete)
        if skipping_comment:
            buffer = ""
        elif len(buffer) > max_line:
            comment = buffer.find("#")
            if comment >= 0:
                yield from split_id_text(buffer[:comment])
                buffer, skipping_comment = "", True
            else:
                cut = max(buffer.rfind(separator) for separator in " ,;\t\r")
                yield from split_id_text(buffer[: max(cut, 0)] if cut >= 0 else buffer)
                buffer = buffer[cut + 1 :] if cut >= 0 else ""
        partial_line = buffer
    if partial_line and not skipping_comment:
        yield from split_id_text(partial_line)


def parse_positive(name: str, raw: object) -> int | None:
    """An optional positive whole number given by name (a service ID, a quantity)."""
    if raw is None:
        return None
    try:
        return parse_order_id(raw)
    except ValueError as exc:
        raise ValueError(f"{name} {raw!r} {exc}") from None
