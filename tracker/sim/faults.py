"""Fault injection for the simulated provider.

Rules are queued with ``POST /admin/faults`` and checked, in order, for every API request
(admin requests are never faulted). A rule matches when its ``actions`` include the
request's action (``None``: every action), it has let its first ``skip`` matching
requests through, its ``probability`` roll succeeds (``None``: always) and it has firings
left (``count``; ``None``: unlimited). The first matching rule
fires; a rule whose count reaches 0 is removed.

What each kind does:

=================  ==========================================================================
kind               effect
=================  ==========================================================================
http_500           HTTP 500, an HTML error page; the request is not processed
http_502           HTTP 502, an nginx "Bad Gateway" page; not processed
html               HTTP 503 Cloudflare-like "Just a moment..." challenge page; not processed
html_200           the same challenge page with HTTP 200; not processed
rate_limit         HTTP 429 with ``Retry-After: <seconds>``; not processed
invalid_key        HTTP 200 ``{"error": "Invalid API key"}``; not processed
drop_connection    the socket is closed without any answer; not processed
act_then_drop      processed, then the socket is closed without any answer
act_then_hang      processed, then the answer is held back ``seconds`` (default 60), past
                   a client's read timeout
trickle            processed, then the answer is sent one byte every ``seconds`` (default
                   0.2): each read is quick, the whole answer takes far too long
endless            not processed; an answer that never ends, written as fast as the client
                   reads it, for at most ``seconds`` (default 30)
broken_json        processed, then the JSON answer is cut in half (HTTP 200)
php_warning        processed, then a PHP warning is printed before the valid JSON
php_fatal          processed, then a PHP deprecation before the valid JSON and a PHP
                   "Fatal error: Uncaught ..." after it (a destructor or shutdown
                   function that died): the body is refused
php_deprecated     processed, then a PHP "Deprecated" (html_errors) before the valid JSON
php_notice         processed, then a PHP "Notice" (html_errors) before the valid JSON
php_notice_text    processed, then plain-text "PHP Deprecated:" and "Notice:" lines
                   before the valid JSON
codeigniter_notice processed, then CodeIgniter "A PHP Error was encountered" blocks of
                   Severity Notice and 8192 (E_DEPRECATED) before the valid JSON
codeigniter_warning  processed, then the same block of Severity Warning before the JSON
laravel_deprecation  processed, then a Whoops/Ignition-style ErrorException block for an
                   E_DEPRECATED before the valid JSON
slow               sleeps ``seconds`` (real), then processed normally
hold               blocks until ``POST /admin/release`` (or ``seconds``, default 600, pass),
                   then processed normally
=================  ==========================================================================

``broken_json``, ``act_then_drop``, ``act_then_hang`` and ``php_fatal`` process the
request on purpose: a provider that created a refill and then failed to answer is exactly
the case a client must survive. The warning, notice and deprecation kinds are what panels
left in debug mode print; PHP carries on after them and a client salvages the JSON, while
``php_fatal`` stays a failure.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    HTTP_500 = "http_500"
    HTTP_502 = "http_502"
    HTML = "html"
    HTML_200 = "html_200"
    BROKEN_JSON = "broken_json"
    PHP_WARNING = "php_warning"
    PHP_FATAL = "php_fatal"
    PHP_DEPRECATED = "php_deprecated"
    PHP_NOTICE = "php_notice"
    PHP_NOTICE_TEXT = "php_notice_text"
    CODEIGNITER_NOTICE = "codeigniter_notice"
    CODEIGNITER_WARNING = "codeigniter_warning"
    LARAVEL_DEPRECATION = "laravel_deprecation"
    SLOW = "slow"
    RATE_LIMIT = "rate_limit"
    INVALID_KEY = "invalid_key"
    DROP_CONNECTION = "drop_connection"
    ACT_THEN_DROP = "act_then_drop"
    ACT_THEN_HANG = "act_then_hang"
    TRICKLE = "trickle"
    ENDLESS = "endless"
    HOLD = "hold"


DEFAULT_HOLD_LIMIT_S = 600.0


@dataclass(slots=True)
class FaultRule:
    kind: FaultKind
    remaining: int | None = None
    probability: float | None = None
    actions: frozenset[str] | None = None
    seconds: float | None = None
    # Matching requests to let through before the rule starts firing.
    skip: int = 0

    def matches(self, action: str) -> bool:
        return self.actions is None or action in self.actions

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "count": self.remaining,
            "probability": self.probability,
            "actions": sorted(self.actions) if self.actions is not None else None,
            "seconds": self.seconds,
            "skip": self.skip,
        }


def parse_rule(spec: dict[str, Any]) -> FaultRule:
    """Build a rule from the admin JSON body; raises ``ValueError`` on bad input."""
    try:
        kind = FaultKind(str(spec.get("kind")))
    except ValueError:
        known = ", ".join(kind.value for kind in FaultKind)
        raise ValueError(f"unknown fault kind {spec.get('kind')!r}; known: {known}") from None
    count = spec.get("count")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError("count must be a positive integer or null")
    probability = spec.get("probability")
    if probability is not None:
        if not isinstance(probability, (int, float)) or not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1, or null")
        probability = float(probability)
    actions = spec.get("actions")
    if actions is not None:
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ValueError("actions must be a list of action names, or null")
        actions = frozenset(actions)
    seconds = spec.get("seconds")
    if seconds is not None:
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError("seconds must be a non-negative number, or null")
        seconds = float(seconds)
    skip = spec.get("skip") or 0
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
        raise ValueError("skip must be a non-negative integer, or null")
    return FaultRule(kind, count, probability, actions, seconds, skip)


class FaultQueue:
    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._random = random.Random(seed)
        self.fired: dict[str, int] = {}

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> int:
        with self._lock:
            cleared = len(self._rules)
            self._rules = []
            return cleared

    def reset_counts(self) -> None:
        with self._lock:
            self.fired = {}

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_json() for rule in self._rules]

    def pick(self, action: str) -> FaultRule | None:
        if not self._rules:  # the common case, without taking the lock
            return None
        with self._lock:
            for index, rule in enumerate(self._rules):
                if not rule.matches(action):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                if rule.probability is not None and self._random.random() >= rule.probability:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        del self._rules[index]
                self.fired[rule.kind] = self.fired.get(rule.kind, 0) + 1
                return rule
        return None


class HoldGate:
    """Where ``hold`` faults park requests until released."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    def wait(self, limit_s: float | None) -> None:
        with self._condition:
            generation = self._generation
            self._held += 1
            try:
                self._condition.wait_for(
                    lambda: self._generation != generation,
                    timeout=limit_s if limit_s is not None else DEFAULT_HOLD_LIMIT_S,
                )
            finally:
                self._held -= 1

    def release(self) -> int:
        with self._condition:
            released = self._held
            self._generation += 1
            self._condition.notify_all()
            return released


@dataclass(frozen=True, slots=True)
class CannedReply:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


_HTML = "text/html; charset=UTF-8"

_CHALLENGE_PAGE = b"""<!DOCTYPE html>
<html lang="en-US">
<head>
<title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<meta name="robots" content="noindex,nofollow">
</head>
<body>
<div class="main-wrapper" role="main">
<h1>Checking if the site connection is secure</h1>
<p>Enable JavaScript and cookies to continue</p>
<noscript>Please enable JavaScript</noscript>
</div>
<div class="footer">Performance &amp; security by Cloudflare</div>
</body>
</html>
"""

_BAD_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

_SERVER_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>"
    b"<body><h1>Internal Server Error</h1><p>The server encountered an internal error and "
    b"was unable to complete your request.</p></body></html>\n"
)

_PHP_WARNING = (
    b'<br />\n<b>Warning</b>:  Undefined array key "currency" in '
    b"<b>/var/www/panel/app/Api/V2.php</b> on line <b>217</b><br />\n"
)


_PHP_DEPRECATED = (
    b"<br />\n<b>Deprecated</b>:  Creation of dynamic property Api\\V2::$db is deprecated in "
    b"<b>/var/www/panel/app/Api/V2.php</b> on line <b>12</b><br />\n"
)

_PHP_NOTICE = (
    b"<br />\n<b>Notice</b>:  Undefined index: currency in "
    b"<b>/var/www/panel/app/Api/V2.php</b> on line <b>88</b><br />\n"
)

_PHP_NOTICE_TEXT = (
    b"PHP Deprecated:  strlen(): Passing null to parameter #1 ($string) of type string is "
    b"deprecated in /var/www/panel/app/Api/V2.php on line 31\n"
    b"Notice: Undefined offset: 1 in /var/www/panel/app/Api/V2.php on line 40\n"
)


def codeigniter_error_block(severity: str) -> bytes:
    """CodeIgniter 3's errors/html/error_php.php (it prints E_DEPRECATED as 8192)."""
    return (
        '<div style="border:1px solid #990000;padding-left:20px;margin:0 0 10px 0;">\n\n'
        "<h4>A PHP Error was encountered</h4>\n\n"
        f"<p>Severity: {severity}</p>\n"
        "<p>Message:  Undefined index: currency</p>\n"
        "<p>Filename: controllers/Api.php</p>\n"
        "<p>Line Number: 42</p>\n\n"
        "\t<p>Backtrace:</p>\n\t\n"
        '\t\t<p style="margin-left:10px">\n'
        "\t\tFile: /var/www/panel/application/controllers/Api.php<br />\n"
        "\t\tLine: 42<br />\n"
        "\t\tFunction: _error_handler\t\t\t</p>\n\n"
        "</div>"
    ).encode()


_CODEIGNITER_NOTICE = codeigniter_error_block("Notice") + b"\n" + codeigniter_error_block("8192")
_CODEIGNITER_WARNING = codeigniter_error_block("Warning")

_LARAVEL_DEPRECATION = (
    b'<div class="exception-summary">\n'
    b'  <div class="exc-title">\n'
    b'    <span class="exc-title-primary">ErrorException</span>\n'
    b'    <span class="exc-title-secondary">(E_DEPRECATED)</span>\n'
    b"  </div>\n"
    b'  <div class="exc-message"><span>Deprecated: Return type of App\\Support\\Bag::offsetGet($key)'
    b" should either be compatible with ArrayAccess::offsetGet(mixed $offset): mixed</span></div>\n"
    b'  <div class="frame">vendor/laravel/framework/src/Illuminate/Foundation/Bootstrap/'
    b"HandleExceptions.php:255</div>\n"
    b"</div>\n"
)

# Printed before the real answer, which is processed as usual.
_NOISE_BEFORE_JSON: dict[FaultKind, bytes] = {
    FaultKind.PHP_WARNING: _PHP_WARNING,
    FaultKind.PHP_DEPRECATED: _PHP_DEPRECATED,
    FaultKind.PHP_NOTICE: _PHP_NOTICE,
    FaultKind.PHP_NOTICE_TEXT: _PHP_NOTICE_TEXT,
    FaultKind.CODEIGNITER_NOTICE: _CODEIGNITER_NOTICE,
    FaultKind.CODEIGNITER_WARNING: _CODEIGNITER_WARNING,
    FaultKind.LARAVEL_DEPRECATION: _LARAVEL_DEPRECATION,
}


def canned_reply(rule: FaultRule) -> CannedReply | None:
    """The answer a short-circuiting fault sends instead of processing the request.

    ``None`` for kinds that let the request through (slow, hold, broken_json, php_fatal, the PHP
    and framework noise kinds) and for ``drop_connection``, which sends nothing at all.
    """
    kind = rule.kind
    if kind is FaultKind.HTTP_500:
        return CannedReply(500, _SERVER_ERROR_PAGE, _HTML)
    if kind is FaultKind.HTTP_502:
        return CannedReply(502, _BAD_GATEWAY_PAGE, _HTML)
    if kind is FaultKind.HTML:
        return CannedReply(503, _CHALLENGE_PAGE, _HTML)
    if kind is FaultKind.HTML_200:
        return CannedReply(200, _CHALLENGE_PAGE, _HTML)
    if kind is FaultKind.RATE_LIMIT:
        retry_after = rule.seconds if rule.seconds is not None else 1.0
        return CannedReply(
            429,
            b'{"error":"Too many requests"}',
            "application/json",
            (("Retry-After", str(math.ceil(max(0.0, retry_after)))),),
        )
    if kind is FaultKind.INVALID_KEY:
        return CannedReply(200, b'{"error":"Invalid API key"}', "application/json")
    return None


_PHP_FATAL_AFTER_JSON = (
    b"<br />\n<b>Fatal error</b>:  Uncaught RuntimeException: SMTP server unreachable in "
    b"/var/www/panel/app/Mailer.php:88\nStack trace:\n#0 [internal function]: Mailer->__destruct()\n"
    b"#1 {main}\n  thrown in <b>/var/www/panel/app/Mailer.php</b> on line <b>88</b><br />\n"
)


def damage_body(rule: FaultRule, body: bytes) -> bytes:
    """Apply a body-damaging fault to a real answer (no-op for other kinds)."""
    if rule.kind is FaultKind.BROKEN_JSON:
        return body[: max(1, len(body) // 2)]
    if rule.kind is FaultKind.PHP_FATAL:
        return _PHP_DEPRECATED + body + _PHP_FATAL_AFTER_JSON
    noise = _NOISE_BEFORE_JSON.get(rule.kind)
    return noise + body if noise is not None else body
