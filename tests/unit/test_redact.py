from __future__ import annotations

import html
from collections.abc import Iterable
from urllib.parse import quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.apiv2 import redact as redact_module
from tracker.apiv2.redact import MASK, excerpt, redact, redact_head

KEY = "a1b2c3d4e5f6+/=secret"


def test_removes_every_occurrence_of_each_secret() -> None:
    text = f"first {KEY} then {KEY} and other-secret"
    cleaned = redact(text, [KEY, "other-secret", ""])
    assert KEY not in cleaned
    assert "other-secret" not in cleaned
    assert cleaned == f"first {MASK} then {MASK} and {MASK}"


def test_removes_url_encoded_and_upper_cased_spellings() -> None:
    cleaned = redact(f"echo: {quote_plus(KEY)} / {KEY.upper()}", [KEY])
    assert quote_plus(KEY) not in cleaned
    assert KEY.upper() not in cleaned


def test_removes_key_form_parameters_even_for_unknown_keys() -> None:
    cleaned = redact("POST key=zzz999&action=status&api_key=yyy888 monkey=banana", [])
    assert "zzz999" not in cleaned
    assert "yyy888" not in cleaned
    assert "action=status" in cleaned
    assert "monkey=banana" in cleaned


def test_removes_json_key_values() -> None:
    cleaned = redact('{"key": "zzz999", "action": "status", "KEY":12345}', [])
    assert "zzz999" not in cleaned
    assert "12345" not in cleaned
    assert '"action": "status"' in cleaned


def test_without_secrets_text_is_unchanged() -> None:
    assert redact("nothing to hide here", []) == "nothing to hide here"


def test_excerpt_decodes_lossily_and_collapses_whitespace() -> None:
    body = b"<html>\n\n  <b>Bad \xff gateway</b>\t\r\n</html>"
    assert excerpt(body, []) == "<html> <b>Bad \ufffd gateway</b> </html>"


def test_excerpt_truncates_with_an_ellipsis() -> None:
    text = excerpt("x" * 500, [], limit=20)
    assert len(text) == 20
    assert text.endswith("…")
    assert excerpt("short", [], limit=20) == "short"


def test_excerpt_redacts_before_truncating() -> None:
    # The key straddles the cut: truncating first would leave its first half visible.
    body = "y" * 15 + KEY + "z" * 100
    text = excerpt(body, [KEY], limit=20)
    assert KEY[:4] not in text
    assert text.startswith("y" * 15 + MASK)


def test_a_text_cut_short_loses_the_start_of_a_secret_at_its_end() -> None:
    """What was cut from a longer text may end in the first characters of a secret, which
    ``redact`` cannot recognise: ``redact_head`` drops them as well."""
    for size in range(1, len(KEY)):
        assert redact_head(f"before {KEY} after {KEY[:size]}", [KEY]) == f"before {MASK} after "
        assert redact_head(f"shouted {KEY.upper()[:size]}", [KEY]) == "shouted "
    encoded = quote_plus(KEY)
    assert encoded != KEY
    for size in range(1, len(encoded)):
        assert redact_head(f"echo={encoded[:size]}", [KEY]) == "echo="
    assert redact_head("nothing to hide", [KEY]) == "nothing to hide"
    assert redact_head("key=zzz9", []) == f"key={MASK}"


def test_a_secret_in_html_entities_is_removed() -> None:
    key = 'a&b<c>"d'
    assert redact(f"<p>{html.escape(key)}</p>", [key]) == f"<p>{MASK}</p>"
    assert redact_head(f"<p>{html.escape(key)[:6]}", [key]) == "<p>"


def _whole_body_excerpt(text: str, secrets: list[str], limit: int) -> str:
    """The excerpt read from the whole body: the reference a shorter reading must match."""
    shown = " ".join(redact(text, secrets).split())
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


_PIECES = st.sampled_from([
    KEY, quote_plus(KEY), KEY.upper(), " ", "\n", " " * 300, "\t" * 40, "key=", '"key": "', "&action=status",
    "<b>Warning</b>", "word", "x" * 97, "é", "…",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=120), st.sampled_from([20, 160]))
def test_an_excerpt_of_a_long_body_is_the_whole_bodys(pieces: list[str], limit: int) -> None:
    """Only the start of a long body is read (an 8 MB answer is not redacted whole for 160
    characters of it): what it shows is what reading all of it shows."""
    text = "".join(pieces)
    shown = excerpt(text, [KEY], limit=limit)
    assert KEY[:6] not in shown and KEY.upper()[:6] not in shown
    if '"key": "' not in text:
        # A JSON "key" field's value is masked up to its closing quote, which may lie past
        # the part read: then the two differ in what follows the mask, both key-free.
        assert shown == _whole_body_excerpt(text, [KEY], limit)


def test_an_excerpt_reads_only_the_start_of_a_long_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """Of a 2 MB body, only the start is redacted (how much text redaction is given is
    counted; no time asserted)."""
    body = "head " + "x " * 1_000_000 + KEY
    real = redact_module.redact
    read: list[int] = []

    def counted(text: str, secrets: Iterable[str]) -> str:
        read.append(len(text))
        return real(text, secrets)

    monkeypatch.setattr(redact_module, "redact", counted)
    assert excerpt(body, [KEY]).startswith("head x x x")
    assert read and sum(read) < 100_000, read


def test_a_key_across_the_end_of_what_an_excerpt_reads_shows_none_of_it() -> None:
    """Characters shown, then spaces that collapse, then a key across the end of the
    excerpt's first reading: at every place, the key is masked whole or not shown."""
    for key_at in range(900, 4200, 7):
        text = "w" * 150 + " " * (key_at - 150) + KEY + " tail" * 50
        shown = excerpt(text, [KEY])
        assert shown == _whole_body_excerpt(text, [KEY], 160), key_at
        assert not any(KEY[:size] in shown for size in range(3, len(KEY))), (key_at, shown)
