"""PHP diagnostics around an API v2 answer, as panels left in debug mode print them (pure:
text in, a verdict out; no logging, the client logs what it is told).

The rule comes from what PHP does. After a deprecation, a notice or a warning
(E_DEPRECATED, E_NOTICE, E_WARNING and their E_USER_ kin, E_CORE_WARNING,
E_COMPILE_WARNING, E_STRICT) the script carries on, so the JSON it prints is exactly what
the panel sends in production with ``display_errors`` off: that answer is salvaged. A
fatal error (E_ERROR, E_PARSE, E_CORE_ERROR, E_COMPILE_ERROR, E_USER_ERROR,
E_RECOVERABLE_ERROR, an uncaught exception) stops the script, so nothing after it is an
answer and the body is refused. Under PHP's default settings (``display_errors`` on,
``output_buffering`` off) the first diagnostic sends the headers, and the panel's own
``header()``, ``ini_set('session.…')`` and ``session_start()`` calls then add their
"headers already sent" warnings: warnings are the normal case, not a sign of a bad answer.

A body is salvaged when it is: diagnostics, exactly one JSON document (object or array),
diagnostics; whitespace between them. Anything else around the JSON (text, HTML, a second
document), a fatal or unknown diagnostic, or no complete document refuses it, and the
``Salvaged`` says why and which block decided. A body that does not begin with a
diagnostic nor the JSON (a Cloudflare page, HTML) is left to the JSON parser to describe.

Renderings recognised, each one "block":
- PHP's own HTML (``html_errors``, the default of ``php -S`` and the web SAPIs):
  ``<br />\\n<b>Warning</b>:  msg in <b>file</b> on line <b>12</b><br />``;
- PHP's plain text (``html_errors`` off): ``Warning: msg in /path on line 12``, and the
  log form ``PHP Warning:  msg in /path on line 12``; a fatal one may span lines;
- CodeIgniter 3's error view: ``<div ...><h4>A PHP Error was encountered</h4><p>Severity:
  Warning</p>...</div>``, levels by name or, for those it does not name, by number
  (8192 for E_DEPRECATED); its "An uncaught Exception was encountered" view is fatal;
- Xdebug's ``<table class='xdebug-error xe-warning'>`` (in ``<font size='1'>`` or not);
- a Laravel/Whoops-style ``ErrorException`` block for a deprecation or a notice, its level
  read from its header alone (Whoops' ``ErrorException (E_DEPRECATED)``), never from words
  in its message. Such a framework throws a warning as an exception, which ends the
  request: its block for a warning, for any other exception, or with no level field, is
  fatal.

Linear time, whatever the body: at each position its first characters choose one
recogniser, which reads that one block (or its header only, when the header says fatal);
the JSON's end is found by the JSON decoder; no pattern backtracks over more than a tag.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from tracker.apiv2.redact import excerpt, redact_head


class PhpSeverity(StrEnum):
    """What a salvaged answer had around its JSON, the worst one: the metrics' label."""

    DEPRECATED = "deprecated"
    NOTICE = "notice"
    WARNING = "warning"


# Worse after better, as the enum lists them.
_RANK = {severity: rank for rank, severity in enumerate(PhpSeverity)}

# A block's verdict: salvageable with its severity, fatal (the script stopped), or a
# diagnostic whose level PHP does not define (refused: there is no knowing).
_Verdict = PhpSeverity | Literal["fatal", "unknown"]

# PHP's own names for its levels (main.c), lower-case, "PHP " prefix removed.
_PHP_LEVELS: dict[str, _Verdict] = {
    "deprecated": PhpSeverity.DEPRECATED,
    "notice": PhpSeverity.NOTICE,
    "strict standards": PhpSeverity.NOTICE,
    "warning": PhpSeverity.WARNING,
    "fatal error": "fatal",
    "recoverable fatal error": "fatal",
    "catchable fatal error": "fatal",
    "parse error": "fatal",
    "unknown error": "unknown",
}
# PHP's levels by constant (a framework names them so) and value: what the script does
# after one.
_PHP_CONSTANTS: dict[str, tuple[int, _Verdict]] = {
    "E_ERROR": (1, "fatal"),
    "E_WARNING": (2, PhpSeverity.WARNING),
    "E_PARSE": (4, "fatal"),
    "E_NOTICE": (8, PhpSeverity.NOTICE),
    "E_CORE_ERROR": (16, "fatal"),
    "E_CORE_WARNING": (32, PhpSeverity.WARNING),
    "E_COMPILE_ERROR": (64, "fatal"),
    "E_COMPILE_WARNING": (128, PhpSeverity.WARNING),
    "E_USER_ERROR": (256, "fatal"),
    "E_USER_WARNING": (512, PhpSeverity.WARNING),
    "E_USER_NOTICE": (1024, PhpSeverity.NOTICE),
    "E_STRICT": (2048, PhpSeverity.NOTICE),
    "E_RECOVERABLE_ERROR": (4096, "fatal"),
    "E_DEPRECATED": (8192, PhpSeverity.DEPRECATED),
    "E_USER_DEPRECATED": (16384, PhpSeverity.DEPRECATED),
}
# CodeIgniter 3's names for the levels (CI_Exceptions::$levels; Symfony's ErrorHandler
# uses the same ones), and the numbers it prints for the others: every E_* value, so a
# panel's own handler printing numbers is read too.
_CODEIGNITER_LEVELS: dict[str, _Verdict] = {
    "error": "fatal",
    "warning": PhpSeverity.WARNING,
    "parsing error": "fatal",
    "notice": PhpSeverity.NOTICE,
    "core error": "fatal",
    "core warning": PhpSeverity.WARNING,
    "compile error": "fatal",
    "compile warning": PhpSeverity.WARNING,
    "user error": "fatal",
    "user warning": PhpSeverity.WARNING,
    "user notice": PhpSeverity.NOTICE,
    "runtime notice": PhpSeverity.NOTICE,
    "deprecated": PhpSeverity.DEPRECATED,
    "user deprecated": PhpSeverity.DEPRECATED,
    **{str(value): verdict for value, verdict in _PHP_CONSTANTS.values()},
}
# A level named in words, in any of those renderings.
_NAMED_LEVELS: dict[str, _Verdict] = {**_CODEIGNITER_LEVELS, **_PHP_LEVELS}
# Xdebug's class names (xdebug_error_type_simple), and its exception tables.
_XDEBUG_KINDS: dict[str, _Verdict] = {
    "deprecated": PhpSeverity.DEPRECATED,
    "notice": PhpSeverity.NOTICE,
    "strict-standards": PhpSeverity.NOTICE,
    "warning": PhpSeverity.WARNING,
    "fatal-error": "fatal",
    "recoverable-fatal-error": "fatal",
    "parse-error": "fatal",
    "uncaught-exception": "fatal",
}


def _level(name: str) -> str:
    level = " ".join(name.lower().split())
    return level[4:] if level.startswith("php ") else level


# Where a block may start: an optional <br />, then what picks the recogniser.
_START = re.compile(
    r"(?:<br\s*/?>\s*)?(?:(?P<bold><b>)|(?P<xdebug><font\b|<table\b)|(?P<div><div\b)|(?P<plain>[A-Za-z]))",
    re.IGNORECASE,
)

# PHP's HTML: "<br />\n<b>Warning</b>:  msg in <b>file</b> on line <b>12</b><br />". The
# message is HTML-escaped, so it holds no "<".
_HTML_HEAD = re.compile(r"(?:<br\s*/?>\s*)?<b>\s*(?P<level>[A-Za-z ]{1,40}?)\s*</b>:", re.IGNORECASE)
_HTML_TAIL = re.compile(r"[^<]*(?<= in )<b>[^<]*</b> on line <b>\d+</b>(?:[ \t]*<br\s*/?>)?", re.IGNORECASE)

# Plain text, one line: "PHP Warning:  msg in /path/file.php on line 12". Matched as a
# line, then checked for its " in FILE on line N" ending (no nested lazy scans: linear).
_PLAIN_LINE = re.compile(r"(?P<level>[A-Za-z ]{1,40}?):(?P<message>[^\n]*)(?:\n|$)")
_PLAIN_ENDING = re.compile(r" on line \d+\s*$")

_CODEIGNITER_ERROR = "A PHP Error was encountered"
_CODEIGNITER_EXCEPTION = "An uncaught Exception was encountered"
_CODEIGNITER_HEAD = re.compile(
    rf"<div\b[^>]*>\s*<h4>\s*(?:(?P<error>{_CODEIGNITER_ERROR})|{_CODEIGNITER_EXCEPTION})\s*</h4>",
    re.IGNORECASE,
)
_CODEIGNITER_SEVERITY = re.compile(r"\s*<p>\s*Severity:\s*(?P<level>[^<]{0,40}?)\s*</p>", re.IGNORECASE)
_DIV_TAG = re.compile(r"<(/?)div\b[^>]*>", re.IGNORECASE)

_XDEBUG_HEAD = re.compile(
    r"(?:<br\s*/?>\s*)?(?:<font\b[^>]*>\s*)?<table\b[^>]*?\bclass=['\"]xdebug-error xe-(?P<kind>[a-z-]{1,40})['\"]",
    re.IGNORECASE,
)
_XDEBUG_END = re.compile(r"</table>(?:\s*</font>)?", re.IGNORECASE)

# A framework's error block for a PHP error that it turned into an ErrorException, tags
# dropped. Its level is read from its header only, as Whoops renders it
# (views/header.html.php): the class, then the severity in parentheses
# (PrettyPageHandler names it with Misc::translateErrorCode), then the message, which
# Laravel throws as PHP said it and Symfony's ErrorHandler after a level name.
_FRAMEWORK_HEADER = re.compile(
    r"\s*ErrorException\s*\(\s*(?P<code>E_[A-Z_]{1,30})\s*\)\s*(?:(?P<level>[A-Za-z][A-Za-z ]{0,39}?)\s*:\s)?"
)
_EXCEPTION_NAME = re.compile(r"\b\w*Exception\b")

# A diagnostic named anywhere in a body, as a heading (PHP's, CodeIgniter's, Xdebug's)
# or at the start of a line, in a place or rendering the scan does not read.
_LEVEL_NAMES = "|".join(
    re.escape(name).replace("\\ ", r"\s+") for name in sorted(_PHP_LEVELS, key=len, reverse=True)
)
_DIAGNOSTIC_NAMED = re.compile(
    rf"<b>\s*(?:{_LEVEL_NAMES})\s*</b>|^\s*(?:php\s+)?(?:{_LEVEL_NAMES})\s*:|"
    rf"<h4>\s*(?:{_CODEIGNITER_ERROR}|{_CODEIGNITER_EXCEPTION})\s*</h4>|\bxdebug-error\b",
    re.IGNORECASE | re.MULTILINE,
)

_INLINE_TAG = re.compile(r"</?(?:b|i|span|font|a)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
# A tag or an entity that a cut went through, at the end of what the excerpt reads.
_HALF_MARKUP = re.compile(r"(?:<[^<>]*|&#?\w*)\Z")
# How much of a block whose end is unknown (a fatal one) its excerpt reads.
_EXCERPT_READS = 2000


@dataclass(frozen=True, slots=True)
class _Block:
    verdict: _Verdict
    # None: a fatal or unknown block whose end is not to be found (a multi-line plain
    # one); a salvageable block always has its end, or it is no block.
    end: int | None
    html: bool


@dataclass(frozen=True, slots=True)
class Salvaged:
    """What ``strip_php_notices`` made of a body.

    ``text``: what to parse, the JSON document alone when there were diagnostics around
    it, else the body as it came. ``severity``: the worst diagnostic salvaged (None: none).
    ``diagnostics``: how many blocks were salvaged. ``refusal``: why the body is refused
    (None: it is not). ``block``: a short, tag-free, key-free excerpt of the block that
    decided: the refused one, or the first of the worst severity salvaged."""

    text: str
    severity: PhpSeverity | None = None
    diagnostics: int = 0
    refusal: str | None = None
    block: str = ""

    @property
    def noisy(self) -> bool:
        return self.severity is not None


def _div_block_end(body: str, start: int) -> int | None:
    """The end of the balanced ``<div>...</div>`` that starts at ``start``."""
    depth = 0
    for tag in _DIV_TAG.finditer(body, start):
        if depth == 0 and tag.start() != start:
            return None
        depth += -1 if tag.group(1) else 1
        if depth == 0:
            return tag.end()
    return None


def _html_block(body: str, start: int) -> _Block | None:
    head = _HTML_HEAD.match(body, start)
    if head is None:
        return None
    verdict = _PHP_LEVELS.get(_level(head["level"]))
    if verdict is None:
        return None
    tail = _HTML_TAIL.match(body, head.end())
    if tail is None:
        return _Block(verdict, None, True) if not isinstance(verdict, PhpSeverity) else None
    return _Block(verdict, tail.end(), True)


def _plain_block(body: str, start: int) -> _Block | None:
    line = _PLAIN_LINE.match(body, start)
    if line is None:
        return None
    verdict = _PHP_LEVELS.get(_level(line["level"]))
    if verdict is None or not isinstance(verdict, PhpSeverity):
        return None if verdict is None else _Block(verdict, None, False)
    message = line["message"]
    ending = _PLAIN_ENDING.search(message)
    if ending is None or " in " not in message[: ending.start()]:
        return None
    return _Block(verdict, line.end(), False)


def _codeigniter_block(body: str, start: int) -> _Block | None:
    head = _CODEIGNITER_HEAD.match(body, start)
    if head is None:
        return None
    verdict: _Verdict = "fatal"  # "An uncaught Exception was encountered"
    position = head.end()
    if head["error"] is not None:
        severity = _CODEIGNITER_SEVERITY.match(body, position)
        if severity is None:
            return None
        verdict = _CODEIGNITER_LEVELS.get(_level(severity["level"]), "unknown")
        position = severity.end()
    # The views hold no other div: the next div tag closes them.
    closing = _DIV_TAG.search(body, position)
    if closing is None or not closing.group(1):
        return _Block(verdict, None, True) if not isinstance(verdict, PhpSeverity) else None
    return _Block(verdict, closing.end(), True)


def _framework_block(body: str, start: int) -> _Block | None:
    end = _div_block_end(body, start)
    if end is None:
        return None
    text = html.unescape(_TAG.sub(" ", body[start:end]))
    exceptions = set(_EXCEPTION_NAME.findall(text))
    if not exceptions:
        return None  # some other HTML
    return _Block(_framework_verdict(text, exceptions), end, True)


def _framework_verdict(text: str, exceptions: set[str]) -> _Verdict:
    """An exception page means the request ended there (fatal), save an ErrorException
    whose header says a deprecation or a notice. Never from a word elsewhere in the block:
    a message such as 'Undefined array key "deprecated"' is a warning's (Laravel throws
    every level but deprecations). No level field, or a message naming another level
    than the field: no knowing, refused."""
    header = _FRAMEWORK_HEADER.match(text) if exceptions == {"ErrorException"} else None
    if header is None:
        return "fatal"
    verdict = _PHP_CONSTANTS[header["code"]][1] if header["code"] in _PHP_CONSTANTS else "unknown"
    named = _NAMED_LEVELS.get(_level(header["level"])) if header["level"] else None
    if named is not None and named != verdict:
        return "unknown"
    if verdict in (PhpSeverity.DEPRECATED, PhpSeverity.NOTICE, "unknown"):
        return verdict
    return "fatal"  # a warning too: the framework threw it


def _xdebug_block(body: str, start: int) -> _Block | None:
    head = _XDEBUG_HEAD.match(body, start)
    if head is None:
        return None
    verdict = _XDEBUG_KINDS.get(head["kind"].lower(), "unknown")
    end = _XDEBUG_END.search(body, head.end())
    if end is None:
        return _Block(verdict, None, True) if not isinstance(verdict, PhpSeverity) else None
    return _Block(verdict, end.end(), True)


def _block_at(body: str, start: int) -> _Block | None:
    """The diagnostic that starts at ``start``; None when none does."""
    lead = _START.match(body, start)
    if lead is None:
        return None
    if lead["bold"]:
        return _html_block(body, start)
    if lead["xdebug"]:
        return _xdebug_block(body, start)
    if lead["div"]:
        if lead.start("div") != start:
            return None  # "<br />" then a div: not something PHP prints
        return _codeigniter_block(body, start) or _framework_block(body, start)
    if lead.start("plain") != start:
        return None
    return _plain_block(body, start)


_SPACE = re.compile(r"\s*")


def _skip_space(body: str, position: int) -> int:
    found = _SPACE.match(body, position)
    return found.end() if found is not None else position


def _readable(body: str, start: int, end: int | None, is_html: bool, secrets: Sequence[str]) -> str:
    """A block as a person reads it: tags dropped, entities decoded, key-free, short.

    Only its first ``_EXCERPT_READS`` characters are read, and that cut may go through a
    key, whose first characters no redaction recognises: once tags and entities are
    undone, ``redact_head`` drops them too. (Tags and runs of spaces shrink to nothing, so
    what was at the cut may well be among the characters the excerpt shows.)"""
    stop = end if end is not None else len(body)
    cut = stop - start > _EXCERPT_READS
    chunk = body[start : start + _EXCERPT_READS] if cut else body[start:stop]
    if is_html or chunk.startswith("<"):
        if cut:
            chunk = _HALF_MARKUP.sub("", chunk)
        chunk = html.unescape(_TAG.sub(" ", _INLINE_TAG.sub("", chunk)))
    if cut:
        chunk = redact_head(chunk, secrets)
    return excerpt(chunk, secrets)


_END_OF_DOCUMENT = json.JSONDecoder()


class _Scan:
    """One body being read, block by block."""

    def __init__(self, text: str, body: str, secrets: Sequence[str]) -> None:
        self.text = text
        self.body = body
        self.secrets = secrets
        self.salvaged: list[tuple[PhpSeverity, int, _Block]] = []

    def refuse(self, why: str, start: int, block: _Block | None) -> Salvaged:
        end = block.end if block is not None else None
        is_html = block.html if block is not None else False
        return Salvaged(self.text, refusal=why, block=_readable(self.body, start, end, is_html, self.secrets))

    def refuse_block(self, block: _Block, start: int, after_json: bool) -> Salvaged:
        if block.verdict == "fatal":
            why = (
                "PHP fatal error after the JSON: the script did not end normally (not salvaged)"
                if after_json
                else "PHP fatal error: the script stopped before its answer (not salvaged)"
            )
        else:
            why = "PHP diagnostic of an unknown level (not salvaged)"
        return self.refuse(why, start, block)

    def salvage(self, json_start: int, json_end: int) -> Salvaged:
        severity, start, block = max(self.salvaged, key=lambda entry: (_RANK[entry[0]], -entry[1]))
        return Salvaged(
            self.body[json_start:json_end],
            severity=severity,
            diagnostics=len(self.salvaged),
            block=_readable(self.body, start, block.end, block.html, self.secrets),
        )


def names_a_diagnostic(text: str) -> bool:
    """Whether a body names a PHP diagnostic anywhere, in any rendering read here: what
    the parser says of a body ``strip_php_notices`` left as it came and that is no JSON."""
    return _DIAGNOSTIC_NAMED.search(text) is not None


def strip_php_notices(text: str, secrets: Sequence[str] = ()) -> Salvaged:
    """The one JSON document among the PHP deprecations, notices and warnings around it,
    or the refusal of a body with a fatal error, anything else around its JSON, or no
    complete document. A body that starts with neither is returned unchanged, for the
    JSON parser to describe (HTML, a Cloudflare page, truncated JSON)."""
    body = text.lstrip().lstrip("\ufeff").lstrip()
    if not body or (body[0] in "{[" and body.rstrip()[-1] in "}]"):
        return Salvaged(text)  # the usual case: no block ends with a bracket
    scan = _Scan(text, body, secrets)
    position = 0
    while not body.startswith(("{", "["), position):
        block = _block_at(body, position)
        if block is None:
            if not scan.salvaged:
                return Salvaged(text)  # not PHP noise at all
            return scan.refuse("text that is not a PHP diagnostic before the JSON (not salvaged)", position, None)
        if not isinstance(block.verdict, PhpSeverity) or block.end is None:
            return scan.refuse_block(block, position, after_json=False)
        scan.salvaged.append((block.verdict, position, block))
        position = _skip_space(body, block.end)
        if position == len(body):
            return scan.refuse("PHP diagnostics and no complete JSON document (not salvaged)", *scan.salvaged[-1][1:])
    json_start = position
    try:
        _, json_end = _END_OF_DOCUMENT.raw_decode(body, json_start)
    except (ValueError, RecursionError):
        if not scan.salvaged:
            return Salvaged(text)
        return scan.refuse("PHP diagnostics and no complete JSON document (not salvaged)", json_start, None)
    position = _skip_space(body, json_end)
    while position < len(body):
        block = _block_at(body, position)
        if block is None:
            if not scan.salvaged:
                return Salvaged(text)  # the parser says "invalid JSON (Extra data)"
            return scan.refuse("text that is not a PHP diagnostic after the JSON (not salvaged)", position, None)
        if not isinstance(block.verdict, PhpSeverity) or block.end is None:
            return scan.refuse_block(block, position, after_json=True)
        scan.salvaged.append((block.verdict, position, block))
        position = _skip_space(body, block.end)
    if not scan.salvaged:
        return Salvaged(text)
    return scan.salvage(json_start, json_end)
