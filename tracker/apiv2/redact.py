"""Keep API keys out of anything a human or a log may read.

Provider bodies are half-trusted: a misconfigured panel may echo the request back, and
some error pages print the form fields. Every excerpt of a body, every provider message
and every transport error message goes through ``redact`` before it is stored in an
exception.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"

# ``key=...`` as in a form body or a query string (also ``api_key=`` / ``api-key=``).
_FORM_KEY = re.compile(r"(?i)(?<![a-z0-9])((?:api[_-]?)?key=)[^&\s\"'<>]*")
# ``"key": "..."`` or ``"key": 123`` in JSON.
_JSON_KEY = re.compile(r'(?i)("(?:api[_-]?)?key"\s*:\s*)("(?:[^"\\]|\\.)*"|[^,}\]\s]+)')


def _spellings(secret: str) -> set[str]:
    """The secret as it may appear in a body: raw, URL-encoded, JSON-escaped, HTML-escaped
    (an error page printing the form)."""
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        html.escape(secret),
        html.escape(secret, quote=False),
    }


def _all_spellings(secrets: Iterable[str]) -> set[str]:
    return {spelling for secret in secrets if secret for spelling in _spellings(secret)}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove every occurrence of each non-empty secret and any ``key`` parameter value."""
    spellings = _all_spellings(secrets)
    if spellings:
        # Longest first, so a secret that contains another is masked whole.
        alternatives = "|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True))
        text = re.sub(alternatives, MASK, text, flags=re.IGNORECASE)
    text = _FORM_KEY.sub(lambda m: m.group(1) + MASK, text)
    return _JSON_KEY.sub(lambda m: m.group(1) + f'"{MASK}"', text)


def redact_head(text: str, secrets: Iterable[str]) -> str:
    """``redact`` for the head of a longer text, cut where it may have gone through a
    secret: besides every secret in it, an ending that is the start of one (in any of its
    spellings, trailing whitespace aside) is dropped, since ``redact`` cannot recognise
    half a secret. A ``key=`` value the cut went through is masked as any other."""
    secrets = tuple(secrets)
    text = redact(text, secrets)
    kept = text.rstrip()
    cut = 0
    for spelling in _all_spellings(secrets):
        for size in range(min(len(spelling) - 1, len(kept)), cut, -1):
            if kept[-size:].lower() == spelling[:size].lower():
                cut = size
                break
    return kept[: len(kept) - cut] if cut else text


# How much of a long body an excerpt reads first (it reads more while that is not enough).
_EXCERPT_WINDOW = 1024


def excerpt(body: bytes | str, secrets: Iterable[str], limit: int = 160) -> str:
    """A short, single-line, key-free excerpt of a body for an error message.

    Redaction happens before truncation: cutting first could leave half a key visible.
    Only the start of a long body is read (an 8 MB answer is not redacted whole for 160
    characters of it): a window that grows until, whitespace collapsed, it gives more
    than ``limit`` characters, redacted with ``redact_head`` since its end may cut a key.
    What it shows is what reading the whole body would show.
    """
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    secrets = tuple(secrets)
    window = max(_EXCERPT_WINDOW, 4 * limit)
    while True:
        if len(text) <= window:
            shown = " ".join(redact(text, secrets).split())
            break
        shown = " ".join(redact_head(text[:window], secrets).split())
        if len(shown) > limit:
            break
        window *= 4
    if len(shown) <= limit:
        return shown
    return shown[: max(limit - 1, 0)] + "…"
