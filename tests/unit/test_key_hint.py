"""What `tracker provider list` shows instead of a provider's API key, and the promise
docs/cli.md makes about it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracker.providers.secrets import KEY_HINT_MIN_LENGTH, key_hint

CLI_DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("0123456789abcdef0123456789abcdef", "****cdef"),
        ("abcdefghijkl", "****ijkl"),
        ("abcdefghijk", "****"),
        ("secret", "****"),
        ("k", "****"),
    ],
)
def test_the_hint_shows_the_last_four_characters_of_long_keys_only(key: str, hint: str) -> None:
    assert key_hint(key) == hint


def test_a_hint_never_shows_more_than_a_third_of_any_key() -> None:
    for length in range(1, 80):
        key = "".join(chr(ord("a") + index % 26) for index in range(length))
        shown = len(key_hint(key)) - len("****")
        assert shown * 3 <= length, (length, key_hint(key))


def test_docs_promise_the_rule_the_code_keeps() -> None:
    [row] = [line for line in CLI_DOCS.read_text(encoding="utf-8").splitlines() if "`tracker provider list" in line]
    assert "`****` plus the last 4 characters" in row
    promised = re.search(r"keys of at least (\d+) characters", row)
    assert promised is not None, row
    assert int(promised.group(1)) == KEY_HINT_MIN_LENGTH
