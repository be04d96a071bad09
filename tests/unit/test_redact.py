from __future__ import annotations

import html
from urllib.parse import quote_plus

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
