"""ProviderClient over a real socket: a tiny stdlib HTTP server serving canned answers."""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest

from tests.support.http_server import serving
from tracker.core.status import OrderStatus, RefillStatus
from tracker.apiv2 import php_noise
from tracker.apiv2.client import CallRecord, ProviderClient, parse_retry_after
from tracker.apiv2.errors import (
    AnswerTooLarge,
    HTTPError,
    InvalidKey,
    NotJSON,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    TransportError,
)
from tracker.apiv2.types import Balance, ItemError, OrderReport, RefillReport

KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
PENDING = {"status": "Pending", "charge": "0.5", "start_count": "10", "remains": "5"}


@dataclass
class Reply:
    status: int = 200
    body: str = "{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without answering
    cut: bool = False  # promise more bytes than are sent, then close


@dataclass
class Seen:
    at: float
    form: dict[str, str]
    headers: dict[str, str]


class FakeProvider:
    def __init__(self) -> None:
        self.url = ""
        self.seen: list[Seen] = []
        self.queue: list[Reply] = []
        self.default: Callable[[dict[str, str]], Reply] = lambda form: Reply()
        self._lock = threading.Lock()

    def then(self, *replies: Reply) -> None:
        self.queue.extend(replies)

    def reply_for(self, form: dict[str, str], headers: dict[str, str]) -> Reply:
        with self._lock:
            self.seen.append(Seen(time.monotonic(), form, headers))
            return self.queue.pop(0) if self.queue else self.default(form)


class _Server(ThreadingHTTPServer):
    provider: FakeProvider

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hung up first (timeout tests): expected, not worth a traceback


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
        reply = self.server.provider.reply_for(form, dict(self.headers.items()))
        time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        body = reply.body.encode()
        if "Date" in reply.headers:
            self.send_response_only(reply.status)  # the reply's own Date, not the server's
        else:
            self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) + (100 if reply.cut else 0)))
        self.end_headers()
        self.wfile.write(body)
        if reply.cut:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.provider = fake
    with serving(server, poll_interval=0.02) as base_url:
        fake.url = f"{base_url}/api/v2"
        yield fake


def client_for(
    fake: FakeProvider,
    *,
    retries: int = 2,
    retry_backoff: float = 0.01,
    timeout: tuple[float, float] = (2.0, 2.0),
    max_ids_per_call: int = 100,
    before_call: Callable[[str, float | None], None] | None = None,
    after_call: Callable[[CallRecord], None] | None = None,
) -> ProviderClient:
    return ProviderClient(
        fake.url, KEY, retries=retries, retry_backoff=retry_backoff, timeout=timeout,
        max_ids_per_call=max_ids_per_call, before_call=before_call, after_call=after_call,
    )


def status_answer(form: dict[str, str]) -> Reply:
    return Reply(body=json.dumps({order_id: PENDING for order_id in form["orders"].split(",")}))


def assert_key_absent(error: BaseException) -> None:
    # Nothing chained: the requests exception's request object holds the form body.
    assert error.__context__ is None and error.__cause__ is None
    text = "".join(traceback.format_exception(error)) + repr(error) + str(vars(error))
    assert KEY not in text


# --- batching ------------------------------------------------------------------------


def test_250_ids_go_out_as_100_100_50(provider: FakeProvider) -> None:
    provider.default = status_answer
    with client_for(provider) as client:
        result = client.status_multi(list(range(1, 251)))
    assert [len(seen.form["orders"].split(",")) for seen in provider.seen] == [100, 100, 50]
    sent = [int(i) for seen in provider.seen for i in seen.form["orders"].split(",")]
    assert sent == list(range(1, 251))
    for seen in provider.seen:
        assert set(seen.form) == {"key", "action", "orders"}
        assert (seen.form["key"], seen.form["action"]) == (KEY, "status")
        assert seen.headers["User-Agent"].startswith("tracker/")
        assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sorted(result) == list(range(1, 251))
    assert result[250] == OrderReport(OrderStatus.PENDING, "Pending", Decimal("0.5"), 10, 5, None)


def test_chunk_size_is_configurable_and_ids_are_deduplicated(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(
        body=json.dumps([{"refill": r, "status": "Completed"} for r in form["refills"].split(",")])
    )
    client = client_for(provider, max_ids_per_call=2)
    result = client.refill_status_multi(["7", "8", "7", "9"])
    assert [seen.form["refills"] for seen in provider.seen] == ["7,8", "9"]
    assert {seen.form["action"] for seen in provider.seen} == {"refill_status"}
    assert result == {r: RefillReport(RefillStatus.COMPLETED, "Completed") for r in "789"}


def test_empty_list_makes_no_call(provider: FakeProvider) -> None:
    client = client_for(provider)
    assert client.status_multi([]) == {}
    assert client.refill_status_multi([]) == {}
    assert client.cancel([]) == {}
    assert provider.seen == []


@pytest.mark.parametrize("size", [0, 101, -1])
def test_max_ids_per_call_must_be_1_to_100(provider: FakeProvider, size: int) -> None:
    with pytest.raises(ValueError):
        client_for(provider, max_ids_per_call=size)


def test_answers_for_ids_not_asked_are_ignored(provider: FakeProvider) -> None:
    provider.then(Reply(body=json.dumps({"6": PENDING})), Reply(body=json.dumps({"5": PENDING})))
    client = client_for(provider)
    assert client.status_multi([5]) == {}
    assert list(client.status_multi([5, 6])) == [5]  # 6 was asked but not answered


def test_single_and_action_forms(provider: FakeProvider) -> None:
    provider.then(
        Reply(body='{"order": 23501}'),
        Reply(body='{"refill": 44}'),
        Reply(body='{"refill": "Completed"}'),
        Reply(body='[{"order": 3, "cancel": 1}]'),
        Reply(body='{"balance": 12.5, "currency": "EUR"}'),
        Reply(body=json.dumps(PENDING)),
    )
    client = client_for(provider)
    assert client.add(1, "https://x.test/p", comments=["nice", "great"]) == 23501
    assert client.refill(3) == "44"
    assert client.refill_status("44") == RefillReport(RefillStatus.COMPLETED, "Completed")
    assert list(client.cancel([3])) == [3]
    assert client.balance() == Balance(Decimal("12.5"), "EUR")
    assert isinstance(client.status(3), OrderReport)
    forms = [seen.form for seen in provider.seen]
    assert forms[0] == {"key": KEY, "action": "add", "service": "1", "link": "https://x.test/p",
                        "comments": "nice\ngreat"}
    assert forms[1] == {"key": KEY, "action": "refill", "order": "3"}
    assert forms[2] == {"key": KEY, "action": "refill_status", "refill": "44"}
    assert forms[3] == {"key": KEY, "action": "cancel", "orders": "3"}
    assert forms[4] == {"key": KEY, "action": "balance"}
    assert forms[5] == {"key": KEY, "action": "status", "order": "3"}


# --- retries -------------------------------------------------------------------------


def test_status_is_retried_after_a_500(provider: FakeProvider) -> None:
    provider.then(Reply(500, "<h1>oops</h1>"), Reply(body=json.dumps(PENDING)))
    result = client_for(provider).status(12)
    assert isinstance(result, OrderReport)
    assert len(provider.seen) == 2


def test_retries_back_off_exponentially_then_give_up(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(503, "busy")
    with pytest.raises(HTTPError) as caught:
        client_for(provider, retries=2, retry_backoff=0.1).status_multi([1])
    assert caught.value.status_code == 503
    times = [seen.at for seen in provider.seen]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.1
    assert times[2] - times[1] >= 0.2


def test_status_is_retried_after_a_dropped_connection(provider: FakeProvider) -> None:
    provider.then(Reply(drop=True), Reply(body='{"balance": "1"}'))
    assert client_for(provider).balance() == Balance(Decimal("1"), None)
    assert len(provider.seen) == 2


@pytest.mark.parametrize("reply", [Reply(500, "oops"), Reply(drop=True)])
def test_refill_is_never_retried(provider: FakeProvider, reply: Reply) -> None:
    provider.default = lambda form: reply
    with pytest.raises((HTTPError, TransportError)):
        client_for(provider, retries=5).refill(3)
    assert len(provider.seen) == 1


def test_add_and_cancel_are_never_retried(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(502, "bad gateway")
    client = client_for(provider, retries=5)
    with pytest.raises(HTTPError):
        client.add(1, "https://x.test", 100)
    with pytest.raises(HTTPError):
        client.cancel([1, 2])
    assert [seen.form["action"] for seen in provider.seen] == ["add", "cancel"]


def test_4xx_is_not_retried(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(404, "<html>Not Found</html>")
    with pytest.raises(HTTPError) as caught:
        client_for(provider).status(1)
    assert caught.value.status_code == 404
    assert len(provider.seen) == 1


# --- error mapping -------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("0", 0.0), (None, None)])
def test_429_is_rate_limited_and_not_retried(
    provider: FakeProvider, header: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    provider.default = lambda form: Reply(429, f"slow down {KEY}", headers)
    with pytest.raises(RateLimited) as caught:
        client_for(provider, retries=3).status(1)
    assert caught.value.retry_after == expected
    assert caught.value.status_code == 429
    assert len(provider.seen) == 1
    assert_key_absent(caught.value)


def test_a_retry_after_date_is_read_against_the_answers_own_date(provider: FakeProvider) -> None:
    """The panel's clock, not this worker's, says how far away its Retry-After date is:
    the cool-down every worker honours must not depend on which worker read the 429."""
    headers = {"Retry-After": "Wed, 01 May 2024 12:00:45 GMT", "Date": "Wed, 01 May 2024 12:00:00 GMT"}
    provider.default = lambda form: Reply(429, "slow down", headers)
    with pytest.raises(RateLimited) as caught:
        client_for(provider).status(1)
    assert caught.value.retry_after == 45.0


def test_retry_after_as_http_date() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(" 2.5 ", now) == 2.5


def test_read_timeout_is_provider_timeout(provider: FakeProvider) -> None:
    # The answer would come after 1 s: a ProviderTimeout (not an answer) shows the 0.2 s read
    # timeout cut it short. How soon, in seconds, is printed by benchmarks/timing_checks.py.
    provider.default = lambda form: Reply(body="{}", delay=1.0)
    with pytest.raises(ProviderTimeout) as caught:
        client_for(provider, timeout=(1.0, 0.2), retries=0).status(1)
    assert_key_absent(caught.value)


def test_dropped_connection_is_transport_error(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(drop=True)
    with pytest.raises(TransportError) as caught:
        client_for(provider, retries=0).status(1)
    assert not isinstance(caught.value, ProviderTimeout)
    assert_key_absent(caught.value)


def test_body_cut_short_is_transport_error(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(body='{"status": "Pen', cut=True)
    with pytest.raises(TransportError):
        client_for(provider, retries=0).status(1)


def test_connection_refused_is_transport_error_without_the_key() -> None:
    # Bind then close a socket so the port is (almost certainly) free; the key also sits
    # in the URL so the transport error message would carry it if it were not redacted.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()
    client = ProviderClient(f"http://127.0.0.1:{port}/api/v2?key={KEY}", KEY, retries=0)
    with pytest.raises(TransportError) as caught:
        client.balance()
    assert_key_absent(caught.value)


@pytest.mark.parametrize(
    "body",
    ["<!DOCTYPE html><html><title>Just a moment...</title>Cloudflare</html>",
     f"<br />\n<b>Warning</b>: key {KEY} on line 12<br />\n{{}}"],
)
def test_html_is_not_json(provider: FakeProvider, body: str) -> None:
    provider.default = lambda form: Reply(body=body, headers={"Content-Type": "text/html"})
    with pytest.raises(NotJSON) as caught:
        client_for(provider).status_multi([1])
    assert len(provider.seen) == 1  # a 2xx we cannot read is not retried at the HTTP layer
    assert_key_absent(caught.value)


@pytest.mark.parametrize("status", [200, 401, 403])
def test_invalid_key(provider: FakeProvider, status: int) -> None:
    provider.default = lambda form: Reply(status, json.dumps({"error": f"Invalid API key {KEY}"}))
    with pytest.raises(InvalidKey) as caught:
        client_for(provider).balance()
    assert_key_absent(caught.value)


def test_single_status_not_found_with_http_404(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(404, '{"error": "Incorrect order ID"}')
    assert client_for(provider).status(5) == ItemError("Incorrect order ID")


def test_server_error_page_echoing_the_key(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(500, f"<pre>POST key={KEY}&action=balance</pre>")
    with pytest.raises(HTTPError) as caught:
        client_for(provider, retries=1).balance()
    assert caught.value.status_code == 500
    assert len(provider.seen) == 2  # a 5xx is worth one more call
    assert "action=balance" in caught.value.excerpt
    assert_key_absent(caught.value)


def test_an_answer_too_large_shows_no_part_of_a_key_its_excerpt_cuts(provider: FakeProvider) -> None:
    """The excerpt of an answer over the size cap reads its first bytes: a key echoed across
    that cut, after spaces an excerpt collapses, must not show its first characters."""
    for key_at in range(180, 220, 3):
        provider.then(Reply(body=" " * key_at + KEY + " " + "x" * 100_000))
        client = ProviderClient(provider.url, KEY, max_body_bytes=70_000, retries=0)
        with pytest.raises(AnswerTooLarge) as caught:
            client.balance()
        assert_key_absent(caught.value)
        shown = str(vars(caught.value))
        assert not any(KEY[:size] in shown for size in range(4, len(KEY))), (key_at, caught.value.excerpt)


def test_redirects_are_not_followed(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(307, "", {"Location": "http://elsewhere.test/api"})
    with pytest.raises(HTTPError) as caught:
        client_for(provider).balance()
    assert caught.value.status_code == 307
    assert "elsewhere.test" in str(caught.value)
    assert len(provider.seen) == 1


def test_declared_charset_is_honoured_and_default_is_utf8(provider: FakeProvider) -> None:
    name = "Подписчики"
    provider.then(
        Reply(body=json.dumps([{"service": 1, "name": name}], ensure_ascii=False),
              headers={"Content-Type": "text/html"}),
    )
    [service] = client_for(provider).services()
    assert service.name == name


# --- hooks and hygiene ---------------------------------------------------------------


def test_hooks_see_every_http_call(provider: FakeProvider) -> None:
    provider.then(Reply(500, "x"), Reply(body=json.dumps({"1": PENDING, "2": PENDING})),
                  Reply(body="<html>"))
    before: list[str] = []
    after: list[CallRecord] = []
    client = client_for(provider, before_call=lambda action, _max_wait: before.append(action), after_call=after.append)
    client.status_multi([1, 2])
    with pytest.raises(NotJSON):
        client.balance()
    assert before == ["status", "status", "balance"]
    assert [(r.action, r.ids, r.error) for r in after] == [
        ("status", 2, "HTTPError"), ("status", 2, None), ("balance", 0, "NotJSON")
    ]
    assert all(r.seconds >= 0 for r in after)


def test_before_call_can_stop_the_call(provider: FakeProvider) -> None:
    def refuse(action: str, max_wait: float | None) -> None:
        raise RuntimeError(f"circuit open for {action}")

    with pytest.raises(RuntimeError):
        client_for(provider, before_call=refuse).balance()
    assert provider.seen == []


def test_a_request_built_after_its_slot_passed_waits_for_a_new_slot(provider: FakeProvider) -> None:
    """The rate limiter's hook says by when the request must leave. A loaded host may keep
    the thread from building it in time: it then takes a new slot rather than arrive
    bunched with the callers of the next ones."""
    provider.then(Reply(body=json.dumps({"1": PENDING})))
    slots: list[float] = []

    def limiter(action: str, max_wait: float | None) -> float:
        slots.append(time.monotonic())
        # The first slot has already passed by the time the request is built.
        return slots[-1] - 1.0 if len(slots) == 1 else slots[-1] + 60.0

    client_for(provider, before_call=limiter).status_multi([1])
    assert len(slots) == 2
    assert len(provider.seen) == 1


def test_repr_and_api_url_hide_credentials(provider: FakeProvider) -> None:
    url = provider.url.replace("http://", f"http://user:{KEY}@") + f"?key={KEY}&lang=en"
    client = ProviderClient(url, KEY)
    assert KEY not in repr(client)
    assert KEY not in client.api_url
    assert "user" not in client.api_url
    assert client.api_url.startswith("http://127.0.0.1:")
    assert "lang=en" in client.api_url


@pytest.mark.parametrize("bad", [0, -4, True])
def test_bad_order_ids_are_refused_before_any_call(provider: FakeProvider, bad: int) -> None:
    with pytest.raises(ValueError):
        client_for(provider).status_multi([1, bad])
    assert provider.seen == []


def test_errors_are_provider_errors_with_the_action(provider: FakeProvider) -> None:
    provider.default = lambda form: Reply(body="[]")
    with pytest.raises(ProviderError) as caught:
        client_for(provider).refill(1)
    assert caught.value.action == "refill"


# --- PHP diagnostics around the JSON -------------------------------------------------

PHP_DEPRECATED = (
    "<br />\n<b>Deprecated</b>:  Creation of dynamic property CI_URI::$config is deprecated in "
    "<b>/var/www/panel/system/core/URI.php</b> on line <b>101</b><br />\n"
)
PHP_HEADER_WARNING = (
    "<br />\n<b>Warning</b>:  Cannot modify header information - headers already sent by (output "
    "started at /var/www/panel/system/core/URI.php:101) in <b>/var/www/panel/system/core/Output.php"
    "</b> on line <b>471</b><br />\n"
)
PHP_OFFSET_WARNING = (
    "<br />\n<b>Warning</b>:  Trying to access array offset on value of type null in "
    "<b>/var/www/panel/application/controllers/Api.php</b> on line <b>37</b><br />\n"
)


@pytest.mark.parametrize("status", [200, 401, 403])
def test_a_rejected_key_behind_php_warnings_is_invalid_key(provider: FakeProvider, status: int) -> None:
    """The CodeIgniter panel's answer to a wrong key: warnings, then the JSON error. With a
    4xx too: the client reads such a body the same way before deciding it is an error."""
    body = PHP_DEPRECATED + PHP_OFFSET_WARNING + '{"error":"Invalid API key"}'
    provider.default = lambda form: Reply(status, body, headers={"Content-Type": "text/html"})
    records: list[CallRecord] = []
    with pytest.raises(InvalidKey) as caught:
        client_for(provider, after_call=records.append).balance()
    assert_key_absent(caught.value)
    assert [(r.error, r.salvaged) for r in records] == [("InvalidKey", "warning")]


def test_the_call_record_names_the_worst_severity_salvaged(
    provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.then(
        Reply(body=PHP_DEPRECATED + '{"balance": "1.5", "currency": "USD"}'),
        Reply(body=PHP_DEPRECATED + PHP_HEADER_WARNING + '{"balance": "1.5", "currency": "USD"}' + PHP_HEADER_WARNING),
        Reply(body='{"balance": "1.5", "currency": "USD"}'),
    )
    records: list[CallRecord] = []
    client = client_for(provider, after_call=records.append)
    with caplog.at_level("INFO", logger="tracker.apiv2"):
        for _ in range(3):
            assert client.balance() == Balance(Decimal("1.5"), "USD")
    assert [(r.error, r.salvaged) for r in records] == [(None, "deprecated"), (None, "warning"), (None, None)]
    salvage_logs = [record.getMessage() for record in caplog.records if "salvaged" in record.getMessage()]
    assert len(salvage_logs) == 2
    assert "Warning: Cannot modify header information" in salvage_logs[1]


def test_a_fatal_error_after_the_json_fails_the_call_naming_it(provider: FakeProvider) -> None:
    fatal = (
        f"<br />\n<b>Fatal error</b>:  Uncaught PDOException: access denied for key {KEY} in "
        "/var/www/panel/Db.php:9\nStack trace:\n#0 {main}\n  thrown in <b>/var/www/panel/Db.php</b> "
        "on line <b>9</b><br />\n"
    )
    provider.default = lambda form: Reply(body=PHP_DEPRECATED + '{"balance": "1.5"}' + fatal)
    records: list[CallRecord] = []
    with pytest.raises(NotJSON) as caught:
        client_for(provider, after_call=records.append).balance()
    assert "Uncaught PDOException" in str(caught.value) and "Creation of dynamic property" not in caught.value.block
    assert_key_absent(caught.value)
    assert [(r.error, r.salvaged) for r in records] == [("NotJSON", None)]


FATAL_BEFORE_THE_JSON = (
    "<br />\n<b>Fatal error</b>:  Uncaught RuntimeException: SMTP down in /var/www/panel/api.php:8\n"
    "Stack trace:\n#0 {main}\n  thrown in <b>/var/www/panel/api.php</b> on line <b>8</b><br />\n"
)


@pytest.mark.parametrize(
    ("status", "last_block", "document", "raised"),
    [
        (200, "", '{"balance": "1.5", "currency": "USD"}', None),
        (200, FATAL_BEFORE_THE_JSON, '{"balance": "1.5", "currency": "USD"}', NotJSON),
        (401, "", '{"error": "Invalid API key"}', InvalidKey),
        (200, "", '{"error": "Invalid API key"}', InvalidKey),
    ],
    ids=["salvaged", "refused", "rejected key, 401", "rejected key, 200"],
)
def test_each_answer_is_scanned_once(
    provider: FakeProvider, monkeypatch: pytest.MonkeyPatch,
    status: int, last_block: str, document: str, raised: type[ProviderError] | None,
) -> None:
    """Real answers reach 80 KB of diagnostics: the client reads each block of one once
    (the blocks php_noise reads for one call, counted; the reader itself does the work)."""
    body = (PHP_DEPRECATED + PHP_HEADER_WARNING) * 50 + last_block + document
    reader = php_noise._block_at
    reads: list[int] = []

    def counted(text: str, start: int) -> object:
        reads.append(start)
        return reader(text, start)

    provider.default = lambda form: Reply(status, body, headers={"Content-Type": "text/html"})
    monkeypatch.setattr(php_noise, "_block_at", counted)
    client = client_for(provider)
    if raised is None:
        assert client.balance() == Balance(Decimal("1.5"), "USD")
    else:
        with pytest.raises(raised):
            client.balance()
    assert len(reads) == (101 if last_block else 100)
    assert len(set(reads)) == len(reads)
