"""Typed HTTP client for one API v2 provider."""

from __future__ import annotations

import logging

import codecs
import email.utils
import math
import os
import re
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from types import TracebackType
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from tracker.apiv2 import parsing
from tracker.core.time_limits import Deadline
from tracker.apiv2.errors import (
    AnswerTooLarge,
    NotSent,
    HTTPError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    TransportError,
)
from tracker.apiv2.php_noise import PhpSeverity
from tracker.apiv2.redact import excerpt, redact, redact_head
from tracker.apiv2.types import (
    Balance,
    CancelResult,
    CatalogService,
    OrderResult,
    RefillResult,
)

DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 20.0)
# The whole call, connect to the last byte of the body: a panel that trickles its answer
# a byte at a time would otherwise hold a worker for as long as it likes (the read
# timeout applies to each read, not to the answer).
DEFAULT_DEADLINE = 45.0
# A 100-ID status answer is about 15 KB and a large services catalog a few MB; anything
# beyond this is not an API v2 answer, and reading it would only fill memory.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 64 * 1024
MAX_IDS_PER_CALL = 100
_POOL_SIZE = 16

log = logging.getLogger("tracker.apiv2")

# What a task's calls must end by (its soft time limit, less what it keeps to write); set
# per thread by ``calls_finish_by``.
_finish_by: ContextVar[Deadline | None] = ContextVar("tracker_calls_finish_by", default=None)


@contextmanager
def calls_finish_by(deadline: Deadline | None) -> Iterator[None]:
    """Calls made in this block, on this thread, end before ``deadline``: a retry is made
    only while a whole try still fits before it, and the wait for the rate limit
    (``before_call``) is cut to what is left. Whether the first try fits is the caller's
    check (``ProviderClient.attempt_bound``): a call that is started is made."""
    token = _finish_by.set(deadline)
    try:
        yield
    finally:
        _finish_by.reset(token)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP call, for metrics. ``error`` is the error class name, None on success.
    ``salvaged``: the answer's JSON was read from among PHP diagnostics
    (``parsing.strip_php_notices``), the worst of which had this severity; the call then
    went on as any other (it succeeded, or the JSON said the key is rejected...)."""

    action: str
    ids: int
    seconds: float
    error: str | None = None
    salvaged: PhpSeverity | None = None


class _Parser(Protocol[T_co]):
    def __call__(self, text: parsing.Body, *, secrets: Sequence[str] = ...) -> T_co: ...


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), never < 0."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _answered_at(response: requests.Response) -> datetime | None:
    """The answer's Date header, when it has a readable one."""
    value = response.headers.get("Date")
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _user_agent() -> str:
    try:
        version = metadata.version("tracker")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"tracker/{version}"


_CHARSET = re.compile(r"charset\s*=\s*\"?([\w.:-]+)", re.IGNORECASE)


def _decode(response: requests.Response, body: bytes) -> str:
    """Body text: the declared charset if valid, else UTF-8 (never requests' guessing)."""
    match = _CHARSET.search(response.headers.get("Content-Type", ""))
    encoding = "utf-8"
    if match:
        try:
            encoding = codecs.lookup(match.group(1)).name
        except LookupError:
            pass
    return body.decode(encoding, errors="replace")


def _reason(error: requests.ConnectionError) -> object:
    """The urllib3 error under a requests ConnectionError (MaxRetryError's ``reason``)."""
    cause = error.args[0] if error.args else None
    return getattr(cause, "reason", cause)


def _worth_retrying(error: ProviderError) -> bool:
    if isinstance(error, TransportError):
        return True
    if isinstance(error, RateLimited):
        return False  # the caller honours Retry-After; hammering would make it worse
    return isinstance(error, HTTPError) and 500 <= error.status_code < 600


def _limit_next_read(response: requests.Response, seconds: float) -> None:
    """The socket's timeout for the next read of the answer (urllib3 sets it afresh for
    the next request on the connection). A response not read from a socket (a test's
    transport) has none to set."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def _checked_order_id(order_id: int) -> int:
    if isinstance(order_id, bool) or not isinstance(order_id, int) or order_id <= 0:
        raise ValueError(f"order IDs are positive integers, got {order_id!r}")
    return order_id


def _checked_refill_id(refill_id: str) -> str:
    if not isinstance(refill_id, str) or not refill_id or refill_id != refill_id.strip():
        raise ValueError(f"refill IDs are non-empty strings, got {refill_id!r}")
    if "," in refill_id:
        raise ValueError(f"refill IDs cannot contain a comma, got {refill_id!r}")
    return refill_id


def _settle_environment(session: requests.Session, url: str) -> bool | str:
    """Read what requests would read from the environment on every request (proxies and
    NO_PROXY, ~/.netrc, REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE) once, for this one URL, and
    stop requests from reading it again: per request it walked all of os.environ and
    looked for ~/.netrc, a tenth of a status call's CPU. Same outcome, since a client
    only ever calls its one URL and a process's environment does not change under it.
    Returns the ``verify`` value to send (True, or the CA bundle's path)."""
    session.proxies.update(requests.utils.get_environ_proxies(url))
    session.auth = requests.utils.get_netrc_auth(url)
    session.trust_env = False
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class ProviderClient:
    """Calls one provider's API v2 and returns typed results (see ``parsing``).

    One ``requests.Session`` per client, with its own connection pool and no urllib3-level
    retries: retrying is decided here, per action.

    Retries: only the read-only actions ``services``, ``status``, ``refill_status`` and
    ``balance`` are retried automatically (``retries`` times, after
    ``retry_backoff * 2**attempt`` seconds), and only after a transport error or a 5xx.
    ``add``, ``refill`` and ``cancel`` are NEVER retried automatically: they are not
    idempotent, and a request that timed out may well have been executed, so retrying
    could buy an order or request a refill twice. HTTP 429 is never retried here either:
    ``RateLimited.retry_after`` tells the caller how long to leave the provider alone.

    Batch methods split the IDs (de-duplicated, order kept) into calls of at most
    ``max_ids_per_call`` IDs. The result holds only IDs that were asked and answered; an
    asked ID missing from the answer is simply absent, and the caller decides. A batch
    method raises on the first failing call, so a caller of ``cancel``
    that must keep every accepted ID should pass at most ``max_ids_per_call`` IDs at once.

    Redirects are not followed: a redirected POST either loses its body or, with 307/308,
    resends the key to another address. A 3xx is an ``HTTPError`` naming the new location.

    PHP deprecations, notices and warnings printed around the JSON (a panel in debug mode,
    PHP's default settings) are stripped and the answer used, a rejected key included;
    ``CallRecord.salvaged`` gives the worst severity, and an INFO log line names its block.
    A fatal error there, or any other text, still fails the call (``NotJSON``, naming the
    block that decided).

    A 4xx whose body is a JSON ``{"error": ...}`` is parsed like a 2xx one, so a panel that
    answers "Invalid API key" with HTTP 401 still raises ``InvalidKey``.

    Time: one try takes at most ``attempt_bound()`` seconds, request to last byte; a retry
    is made only when it still fits before the deadline the caller set with
    ``calls_finish_by`` (a task's soft time limit), so a call with its retries never
    outlasts it.

    Hooks: ``before_call(action, max_wait)`` runs before every HTTP request, retries
    included (the rate limiter's hook; it may sleep, at most ``max_wait`` seconds when that
    is not None, or raise). It may return the ``time.monotonic()`` by which the request must
    be sent: one built later than that (a loaded host kept the thread waiting) asks the hook
    again before it goes. ``after_call(record)`` runs after every HTTP request with a
    ``CallRecord``.

    The key is never part of ``repr``, of ``api_url``, or of any exception message: the
    requests exceptions are not chained (their request object carries the form body) and
    every message passes through ``redact``.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        max_ids_per_call: int = MAX_IDS_PER_CALL,
        retries: int = 2,
        retry_backoff: float = 0.5,
        deadline: float = DEFAULT_DEADLINE,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        before_call: Callable[[str, float | None], float | None] | None = None,
        after_call: Callable[[CallRecord], None] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the provider URL must look like https://host/api/v2")
        if not key:
            raise ValueError("the API key is empty")
        if not 1 <= max_ids_per_call <= MAX_IDS_PER_CALL:
            raise ValueError(f"max_ids_per_call must be 1..{MAX_IDS_PER_CALL}")
        if retries < 0 or retry_backoff < 0:
            raise ValueError("retries and retry_backoff cannot be negative")
        if len(timeout) != 2 or min(timeout) <= 0:
            raise ValueError("timeout is (connect seconds, read seconds), both > 0")
        if deadline <= 0 or max_body_bytes <= 0:
            raise ValueError("deadline and max_body_bytes must be > 0")
        self._deadline = float(deadline)
        self._max_body = max_body_bytes
        self._url = url
        self._key = key
        userinfo, _, _ = parts.netloc.rpartition("@")
        self._secrets = tuple(s for s in (key, userinfo, parts.password) if s)
        self._timeout = (float(timeout[0]), float(timeout[1]))
        self._max_ids = max_ids_per_call
        self._retries = retries
        self._retry_backoff = retry_backoff
        self._before_call = before_call
        self._after_call = after_call
        self._headers = {"User-Agent": _user_agent(), "Accept": "application/json"}
        self._owns_session = session is None
        self._verify: bool | str = True
        if session is None:
            session = self._new_session()
            self._verify = _settle_environment(session, url)
        self._session = session

    @staticmethod
    def _new_session() -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=_POOL_SIZE, pool_maxsize=_POOL_SIZE, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    @property
    def api_url(self) -> str:
        """The endpoint without credentials (no userinfo, no key in the query)."""
        parts = urlsplit(self._url)
        netloc = parts.netloc.rpartition("@")[2]
        query = redact(parts.query, self._secrets)
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    def __repr__(self) -> str:
        return f"ProviderClient(api_url={self.api_url!r}, timeout={self._timeout!r})"

    def attempt_bound(self) -> float:
        """Seconds one try can take at worst, from sending the request to the last byte of
        the answer: the deadline, which every read of the answer is held to, or the
        connect and read timeouts when they add up to more (the answer's headers must come
        within them; the deadline is checked from there). Not bounded: a panel trickling
        its headers byte by byte, or a DNS lookup that hangs; a task's soft time limit
        abandons those."""
        return max(self._deadline, self._timeout[0] + self._timeout[1])

    def close(self) -> None:
        """Close the connection pool (only a session this client created)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- actions ---------------------------------------------------------------------

    def services(self) -> list[CatalogService]:
        return self._call("services", {}, 0, parsing.parse_services, idempotent=True)

    def add(
        self,
        service: int,
        link: str,
        quantity: int | None = None,
        *,
        runs: int | None = None,
        interval: int | None = None,
        comments: Sequence[str] | None = None,
    ) -> int:
        params: dict[str, object] = {"service": service, "link": link}
        optional = {"quantity": quantity, "runs": runs, "interval": interval}
        params.update({name: value for name, value in optional.items() if value is not None})
        if comments is not None:
            params["comments"] = "\n".join(comments)
        return self._call("add", params, 0, parsing.parse_add, idempotent=False)

    def status(self, order_id: int) -> OrderResult:
        params = {"order": _checked_order_id(order_id)}
        return self._call("status", params, 1, parsing.parse_status, idempotent=True)

    def status_multi(self, order_ids: Sequence[int]) -> dict[int, OrderResult]:
        ids = [_checked_order_id(order_id) for order_id in order_ids]
        # A one-ID `orders=` request may be answered in the single form, errors included.
        return self._batched(
            "status", "orders", ids, parsing.parse_status_multi, True,
            parse_single_id=parsing.parse_status_one_of_multi,
        )

    def refill(self, order_id: int) -> str:
        params = {"order": _checked_order_id(order_id)}
        return self._call("refill", params, 1, parsing.parse_refill, idempotent=False)

    def refill_status(self, refill_id: str) -> RefillResult:
        params = {"refill": _checked_refill_id(refill_id)}
        return self._call("refill_status", params, 1, parsing.parse_refill_status, idempotent=True)

    def refill_status_multi(self, refill_ids: Sequence[str]) -> dict[str, RefillResult]:
        ids = [_checked_refill_id(refill_id) for refill_id in refill_ids]
        parse = parsing.parse_refill_status_multi
        return self._batched("refill_status", "refills", ids, parse, True)

    def cancel(self, order_ids: Sequence[int]) -> dict[int, CancelResult]:
        ids = [_checked_order_id(order_id) for order_id in order_ids]
        return self._batched("cancel", "orders", ids, parsing.parse_cancel, False)

    def balance(self) -> Balance:
        return self._call("balance", {}, 0, parsing.parse_balance, idempotent=True)

    # --- machinery -------------------------------------------------------------------

    def _chunks(self, ids: Sequence[K]) -> Iterator[list[K]]:
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), self._max_ids):
            yield unique[start : start + self._max_ids]

    def _batched(
        self,
        action: str,
        field: str,
        ids: Sequence[K],
        parse: _Parser[dict[K, V]],
        idempotent: bool,
        parse_single_id: Callable[[K], _Parser[dict[K, V]]] | None = None,
    ) -> dict[K, V]:
        result: dict[K, V] = {}
        for chunk in self._chunks(ids):
            params = {field: ",".join(str(entry_id) for entry_id in chunk)}
            chunk_parse = parse_single_id(chunk[0]) if parse_single_id and len(chunk) == 1 else parse
            answer = self._call(action, params, len(chunk), chunk_parse, idempotent=idempotent)
            asked = set(chunk)
            result.update((key, value) for key, value in answer.items() if key in asked)
        return result

    def _call(
        self,
        action: str,
        params: Mapping[str, object],
        ids: int,
        parse: _Parser[T],
        *,
        idempotent: bool,
    ) -> T:
        attempts = 1 + (self._retries if idempotent else 0)
        finish_by = _finish_by.get()
        for attempt in range(attempts):
            try:
                return self._attempt(action, params, ids, parse, finish_by)
            except (TransportError, HTTPError) as error:
                if attempt + 1 >= attempts or not _worth_retrying(error):
                    raise
                pause = self._retry_backoff * 2**attempt
                if finish_by is not None and not finish_by.allows(pause + self.attempt_bound()):
                    # Another try might not end in time: the failure stands, and is
                    # counted as the provider's, rather than cut short unrecorded.
                    raise
                # The type only: a provider's message may echo what we sent.
                log.info("%s call failed (%s); retrying", action, type(error).__name__)
            time.sleep(pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(
        self, action: str, params: Mapping[str, object], ids: int, parse: _Parser[T], finish_by: Deadline | None
    ) -> T:
        send_by = self._wait_for_slot(action, finish_by)
        request = self._prepare(action, params)
        # Built too late for its slot (the thread was kept waiting): a new slot, so the call
        # never arrives bunched with the callers of the next ones.
        while send_by is not None and time.monotonic() > send_by:
            send_by = self._wait_for_slot(action, finish_by)
        started = time.monotonic()
        severity: PhpSeverity | None = None
        try:
            response = self._post(action, request)
            raw = self._read_body(action, response, started + self._deadline)
            body = self._answer(action, response, raw)
            severity = body.severity
            if severity is not None:
                log.info(
                    "%s answer salvaged from %d PHP diagnostics around its JSON, the worst a %s: %s",
                    action, body.diagnostics, severity.value, body.block,
                )
            # Read once: the parser takes what the scan found (a refused body's NotJSON
            # names the block that decided).
            result = parse(body, secrets=self._secrets)
        except ProviderError as error:
            self._record(action, ids, started, type(error).__name__, severity)
            raise
        self._record(action, ids, started, None, severity)
        return result

    def _record(
        self, action: str, ids: int, started: float, error: str | None, salvaged: PhpSeverity | None = None
    ) -> None:
        if self._after_call is not None:
            self._after_call(CallRecord(action, ids, time.monotonic() - started, error, salvaged))

    def _wait_for_slot(self, action: str, finish_by: Deadline | None) -> float | None:
        """The rate limiter's wait (the hook); by when the request must then be sent."""
        if self._before_call is None:
            return None
        # Waiting for the rate limit must leave the try its time.
        max_wait = None if finish_by is None else max(0.0, finish_by.left() - self.attempt_bound())
        return self._before_call(action, max_wait)

    def _prepare(self, action: str, params: Mapping[str, object]) -> requests.PreparedRequest:
        form = {"key": self._key, "action": action}
        form.update((name, str(value)) for name, value in params.items())
        try:
            return self._session.prepare_request(requests.Request("POST", self._url, data=form, headers=self._headers))
        except (requests.RequestException, ValueError) as error:
            failure = NotSent(action, self._describe(error))
        # Outside the except block: the exception must not carry the form with the key.
        raise failure

    def _post(self, action: str, request: requests.PreparedRequest) -> requests.Response:
        try:
            # What Session.post does after preparing: the environment's proxies and CA
            # bundle, unless the session says otherwise.
            options = self._session.merge_environment_settings(request.url, {}, True, self._verify, None)
            return self._session.send(request, timeout=self._timeout, allow_redirects=False, **options)
        except requests.ConnectTimeout as error:
            failure: TransportError = NotSent(action, self._describe(error))
        except requests.Timeout as error:
            failure = ProviderTimeout(action, self._describe(error))
        except requests.ConnectionError as error:
            # Refused or unresolvable: no connection, so nothing reached the provider. Any
            # other connection error (reset, cut short) may have come after it acted.
            never_connected = isinstance(_reason(error), urllib3.exceptions.NewConnectionError)
            failure = (NotSent if never_connected else TransportError)(action, self._describe(error))
        except (requests.RequestException, OSError) as error:
            # ConnectionError, ChunkedEncodingError (body cut short), connection reset...
            failure = TransportError(action, self._describe(error))
        # Raised outside the except block so the requests exception, whose request object
        # holds the form body with the key, is not attached as __context__.
        raise failure

    def _describe(self, error: BaseException) -> str:
        text = f"{type(error).__name__}: {redact(str(error), self._secrets)}"
        return text if len(text) <= 300 else text[:299] + "…"

    def _read_body(self, action: str, response: requests.Response, deadline: float) -> bytes:
        """The whole body, within the call's deadline and the size cap. ``read1`` returns
        what has arrived (one read), so a trickle is checked against the deadline after
        every read, not after the last byte."""
        parts: list[bytes] = []
        size = 0
        failure: ProviderError | None = None
        late = ProviderTimeout(action, f"the answer took longer than the {self._deadline:g} s deadline")
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    failure = late
                    break
                # No read may wait past the deadline either (the read timeout alone would
                # let the last one start just before it and wait a whole read timeout).
                _limit_next_read(response, min(self._timeout[1], left))
                chunk = response.raw.read1(_READ_CHUNK, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > self._max_body:
                    # Its first bytes only: a cut that redact_head knows may go through a key.
                    head = redact_head(b"".join(parts)[:200].decode("utf-8", "replace"), self._secrets)
                    failure = AnswerTooLarge(
                        action, f"the answer is larger than {self._max_body} bytes", excerpt(head, self._secrets)
                    )
                    break
                parts.append(chunk)
        except urllib3.exceptions.ReadTimeoutError as error:
            failure = late if time.monotonic() >= deadline else ProviderTimeout(action, self._describe(error))
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as error:
            # Cut short, reset, or a body that would not decode: the request did complete
            # on our side, so the provider may have acted on it.
            failure = TransportError(action, self._describe(error))
        if failure is not None:
            # The connection is in an unknown state: close it rather than reuse it.
            response.close()
            raise failure
        response.raw.release_conn()
        return b"".join(parts)

    def _answer(self, action: str, response: requests.Response, raw: bytes) -> parsing.Salvaged:
        """The body for the parser, its PHP diagnostics read (the one scan of it), or the
        error its HTTP status means."""
        code = response.status_code
        text = _decode(response, raw)
        if 200 <= code < 300:
            return parsing.strip_php_notices(text, self._secrets)
        if 400 <= code < 500 and code not in (408, 429):
            answer = parsing.strip_php_notices(text, self._secrets)
            if parsing.top_level_error_message(answer):
                return answer  # the parser raises the matching ProviderRejected (PHP noise or not)
        body = excerpt(text, self._secrets)
        if code == 429:
            # A date is read against the answer's own Date: the panel's clock, not this
            # worker's, which may be a minute off the others'.
            retry_after = parse_retry_after(response.headers.get("Retry-After"), _answered_at(response))
            raise RateLimited(action, body, retry_after)
        if 300 <= code < 400:
            location = redact(response.headers.get("Location", "?"), self._secrets)
            body = f"redirect to {location} (not followed); {body}"
        raise HTTPError(action, code, body)
