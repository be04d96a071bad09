"""The PHP kit (kit/php/TrackerKit.php) run by the real ``php``: the tracker's rules for
order IDs, the Celery message it writes to Redis compared with the one Celery's own
``send_task`` writes, loud failures when nothing listens, and the webhook check. A real
worker running what the kit sends, over both transports, is tests/integration/test_php_shop.py."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.helpers import shop_client
from tests.support.php_shop import require_php, run_kit
from tracker.core.ids import MAX_ORDER_ID, parse_order_ids
from tracker.ops.bundled_redis import free_port, redis_server_binary
from tracker.outbox.webhooks import sign

pytestmark = pytest.mark.integration

SECRET = "whsec-php-kit-5b1e"
# What a tracker worker leaves in its broker's database (kombu's binding of its polls queue).
WORKER_MARK = ("_kombu.binding.tracker.polls", "tracker.polls\x06\x16\x06\x16tracker.polls")


@pytest.fixture(autouse=True)
def php() -> None:
    require_php()


@pytest.fixture
def worker_broker(broker_url: str) -> Iterator[str]:
    """A Redis database marked as a tracker worker's, as a worker that once ran leaves it."""
    client = redis.Redis.from_url(broker_url)
    client.sadd(*WORKER_MARK)
    yield broker_url
    client.close()


def test_order_ids_are_checked_by_the_trackers_rules() -> None:
    given: list[Any] = [
        1, 42, "1001", " 77 ", "\t88\n", "007", 1, "42",            # valid, with duplicates
        0, -5, "0", "-5", "", "   ", "abc", "12a", "1.5", "1e3", "١٢",  # refused
        "9223372036854775807", "9223372036854775808", "00000000000000000001", 2**63, 10**30,
        # Named as given up to 16 characters, and digits up to 20; longer ones (a key sent
        # by mistake) by their length in characters only.
        "abcdefghijklmnop", "ключ-ключ-ключ-к", "abcdefghijklmnopq", "sk_live_0123456789abcdef",
        "ключ_0123456789abcdef", "12345678901234567890", "9999999999999999999 ", "012345678901234567890",
        "4" * 45,
    ]
    code, [php] = run_kit([{"call": "checkOrderIds", "ids": given}])
    assert code == 0, php
    # PHP reads a JSON number beyond its ints as a digit string (kit_cli.php decodes with
    # JSON_BIGINT_AS_STRING): the tracker's rules get what the kit got.
    python = parse_order_ids([str(raw) if isinstance(raw, int) and raw > MAX_ORDER_ID else raw for raw in given])
    assert php["valid"] == python.valid
    assert php["duplicates"] == python.duplicates
    # Keyed as the task's result names them (its "id"): the value, or its type and length.
    assert php["refused"] == {str(refused.value): refused.reason for refused in python.rejected}
    assert not [key for key in php["refused"] if "0123456789abcdef" in key or "4" * 21 in key]

    # What only PHP can send: its own types, refused with PHP's names for them.
    code, [typed] = run_kit([{"call": "checkOrderIds", "ids": [None, True, 2.5, [3]]}])
    assert typed["valid"] == []
    assert typed["refused"] == {
        "null": "has type null; expected a number or a digit string",
        "true": "is a boolean, not an order ID",
        "2.5": "has type float; expected a number or a digit string",
        "array": "has type array; expected a number or a digit string",
    }


def queued(broker_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(broker_url)
    try:
        return [json.loads(raw) for raw in reversed(client.lrange("celery", 0, -1))]  # oldest first
    finally:
        client.close()


def test_the_message_in_redis_is_the_one_celerys_send_task_writes(worker_broker: str) -> None:
    shop_client(worker_broker).send_task(
        "tracker.track_orders", args=["panel", [1001, 1002]], kwargs={"service": 12, "quantity": 500}
    )
    code, [result] = run_kit(
        [{"call": "trackOrders", "provider": "panel", "ids": [1001, "1002", "0", 1001], "service": 12, "quantity": 500}],
        worker_broker,
    )
    assert code == 0, result
    assert result["sent"] == [1001, 1002]
    assert result["refused"] == {"0": "must be a positive number"}
    assert result["duplicates"] == 1
    assert result["queue_length"] == 2
    celery_message, php_message = queued(worker_broker)

    assert php_message["headers"]["id"] == result["task_id"]
    assert base64.b64decode(php_message["body"]) and json.loads(base64.b64decode(php_message["body"])) == json.loads(
        base64.b64decode(celery_message["body"])
    )
    assert set(php_message) == set(celery_message)
    assert set(php_message["headers"]) == set(celery_message["headers"])
    # reply_to names a result queue of the Python client's; the tracker keeps no results.
    assert set(php_message["properties"]) == set(celery_message["properties"]) - {"reply_to"}
    for name in ("id", "root_id", "origin", "lang"):
        assert php_message["headers"][name] and celery_message["headers"][name]
        del php_message["headers"][name], celery_message["headers"][name]
    # None: the task's own setting decides (the tracker's tasks keep no results). Celery 5.7
    # writes None too; 5.4 to 5.6 write False, which a worker of any of them also accepts.
    assert php_message["headers"].pop("ignore_result") is None
    assert celery_message["headers"].pop("ignore_result") in (None, False)
    assert php_message["headers"] == celery_message["headers"]  # incl. argsrepr, kwargsrepr
    for name in ("correlation_id", "delivery_tag"):
        del php_message["properties"][name], celery_message["properties"][name]
    del celery_message["properties"]["reply_to"]
    assert php_message["properties"] == celery_message["properties"]
    for name in ("content-type", "content-encoding"):
        assert php_message[name] == celery_message[name]


def test_nothing_listening_or_the_wrong_database_fails_loudly(broker_url: str) -> None:
    def failure(url: str, **options: Any) -> str:
        code, answer = run_kit([{"call": "trackOrders", "provider": "panel", "ids": [1]}], url, **options)
        assert code == 1 and answer["done"] == [], answer
        assert answer["error"] == "Tracker\\KitError", answer
        return str(answer["message"])

    closed = free_port()
    assert failure(f"redis://127.0.0.1:{closed}/0").startswith(
        f"cannot reach the tracker's Redis at redis://127.0.0.1:{closed}/0: Connection refused"
    )
    assert failure(f"http://127.0.0.1:{closed}", user="shop", password="pw").startswith(
        f"cannot reach Flower at http://127.0.0.1:{closed}:"
    )

    # A Redis database no tracker worker ever consumed: the classic silent mistake.
    message = failure(broker_url)
    assert message.startswith(f"no tracker worker has ever consumed {broker_url}: a task sent there would wait forever")
    assert queued(broker_url) == []

    # A password the server refuses: said so, and the password is in no message.
    number = broker_url.rpartition("/")[2]
    host = broker_url.split("//")[1].rpartition("/")[0]
    message = failure(f"redis://:hunter2-not-shown@{host}/{number}")
    assert message.startswith(f"the tracker's Redis at redis://***@{host}/{number} refused AUTH:"), message
    assert "hunter2" not in message

    # Something that accepts connections and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        message = failure(f"redis://127.0.0.1:{port}/0", timeout=1)
        assert message == (
            f"the tracker's Redis at redis://127.0.0.1:{port}/0 did not answer within 1 s while waiting for the answer to EXISTS"
        )
        assert time.monotonic() - started < 10


def test_a_password_and_a_unix_socket(tmp_path: Path) -> None:
    """A Redis server of the test's own that wants a password, on a port and a socket."""
    port, sock, password = free_port(), tmp_path / "redis.sock", "s3cret pass/word"
    server = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", str(sock),
         "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(unix_socket_path=str(sock), password=password, db=2)
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        client.sadd(*WORKER_MARK)
        escaped = "s3cret%20pass%2Fword"
        for url in (
            f"redis://:{escaped}@127.0.0.1:{port}/2",
            f"redis://default:{escaped}@127.0.0.1:{port}/2",   # a Redis 6 ACL user
            f"unix://:{escaped}@{sock}?db=2",                  # redis-py's form
            f"redis+socket://:{escaped}@{sock}?virtual_host=2",  # kombu's
        ):
            code, [result] = run_kit([{"call": "reportDrop", "provider": "panel", "id": 7}], url)
            assert code == 0 and result["sent"] == [7], (url, result)
        assert client.llen("celery") == 4
        code, answer = run_kit([{"call": "reportDrop", "provider": "panel", "id": 7}], f"unix://{sock}?db=2")
        assert code == 1 and answer["message"].startswith(f"the tracker's Redis at unix://{sock}?db=2 refused SELECT: NOAUTH")
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_bad_arguments_are_refused_before_anything_is_sent() -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    # Nothing valid to send: no connection is even tried.
    code, [result] = run_kit([{"call": "trackOrders", "provider": "panel", "ids": ["x", 0]}], unreachable)
    assert code == 0
    assert result == {
        "task_id": None, "sent": [], "duplicates": 0,
        "refused": {"x": "is not a positive whole number", "0": "must be a positive number"},
    }
    code, [drop] = run_kit([{"call": "reportDrop", "provider": "panel", "id": "-3"}], unreachable)
    assert drop["sent"] == [] and drop["refused"] == {"-3": "is not a positive whole number"}

    for call, message in (
        ({"provider": " ", "ids": [1]}, "the provider name is empty"),
        ({"provider": "panel", "ids": [1], "service": 0}, "service 0 must be a positive number"),
        ({"provider": "panel", "ids": [1], "quantity": -10}, "quantity -10 must be a positive number"),
    ):
        code, answer = run_kit([{"call": "trackOrders", **call}], unreachable)
        assert code == 1 and answer["error"] == "InvalidArgumentException"
        assert answer["message"].startswith(message)
    for url in ("rediss://127.0.0.1:6380/0", "amqp://guest@127.0.0.1//", "127.0.0.1:6379"):
        code, answer = run_kit([], url)
        assert code == 1 and answer["error"] == "InvalidArgumentException", answer



def test_no_message_shows_a_password_whatever_parse_url_makes_of_the_url() -> None:
    """Passwords with the characters a URL reserves, not percent-encoded: parse_url() gives
    up on most (and splits `p@ss` at its first '@'); everything between '://' and the last
    '@' stays hidden all the same."""
    port = free_port()
    for url, secrets in (
        (f"redis://:pw1/sec2@127.0.0.1:{port}/0", ("pw1", "sec2")),
        (f"redis://:pw3#sec4@127.0.0.1:{port}", ("pw3", "sec4")),
        (f"redis://user5:pw5?sec6@127.0.0.1:{port}", ("user5", "pw5", "sec6")),
        (f"redis://:pw7@sec8@127.0.0.1:{port}/0", ("pw7", "sec8")),
        (f"rediss://:pw9#sec10@127.0.0.1:{port}/0", ("pw9", "sec10")),
    ):
        code, answer = run_kit([{"call": "trackOrders", "provider": "panel", "ids": [1]}], url)
        assert code == 1, (url, answer)
        message = answer["message"]
        assert f"://***@127.0.0.1:{port}" in message, message
        assert not [secret for secret in secrets if secret in message], message


def test_a_sentinel_url_says_what_to_use_instead() -> None:
    url = "sentinel://:pw11@10.0.0.11:26379/0;sentinel://10.0.0.12:26379;sentinel://:pw12@10.0.0.13:26379"
    code, answer = run_kit([], url)
    assert code == 1 and answer["error"] == "InvalidArgumentException", answer
    assert "behind Sentinel: use Flower's HTTP API, or the current master's redis:// URL" in answer["message"]
    assert answer["message"].endswith("got sentinel://***@10.0.0.13:26379"), answer["message"]


def test_verify_webhook_refuses_forged_stale_and_tampered_deliveries() -> None:
    body = json.dumps({"id": "e1", "type": "order.status_changed", "order_id": 5}).encode()
    now = int(time.time())
    # PHP reads its clock a moment later: the seconds it finds may be a few more.
    outside = "s away from this host's clock (more than 300 s)"

    def headers(timestamp: int, signature: str, style: str = "getallheaders") -> dict[str, str]:
        if style == "server":
            return {"HTTP_X_TRACKER_TIMESTAMP": str(timestamp), "HTTP_X_TRACKER_SIGNATURE": signature}
        if style == "lower":
            return {"x-tracker-timestamp": str(timestamp), "x-tracker-signature": signature}
        return {"X-Tracker-Timestamp": str(timestamp), "X-Tracker-Signature": signature, "X-Tracker-Event-Id": "e1"}

    cases: list[tuple[str, dict[str, str], bytes, str | None]] = [
        ("genuine", headers(now, sign(SECRET, now, body)), body, None),
        ("genuine, $_SERVER keys", headers(now, sign(SECRET, now, body), "server"), body, None),
        ("genuine, lower-case names", headers(now, sign(SECRET, now, body), "lower"), body, None),
        ("genuine, 4 min old", headers(now - 240, sign(SECRET, now - 240, body)), body, None),
        ("forged: another secret", headers(now, sign("not-the-secret", now, body)), body, "the signature does not match"),
        ("forged: no signature", {"X-Tracker-Timestamp": str(now)}, body, "header is missing"),
        ("forged: garbage", headers(now, "sha256=" + "0" * 64), body, "the signature does not match"),
        ("stale: replayed after 301 s", headers(now - 301, sign(SECRET, now - 301, body)), body, outside),
        ("from the future", headers(now + 400, sign(SECRET, now + 400, body)), body, outside),
        ("tampered body", headers(now, sign(SECRET, now, body)), body.replace(b"5", b"6"), "the signature does not match"),
        ("timestamp moved", headers(now - 1, sign(SECRET, now, body)), body, "the signature does not match"),
        ("timestamp not a number", headers(now, sign(SECRET, now, body)) | {"X-Tracker-Timestamp": "now"}, body, "not Unix seconds"),
    ]
    calls = []
    for _, case_headers, case_body, _ in cases:
        for call in ("webhookProblem", "verifyWebhook"):
            calls.append({"call": call, "headers": case_headers, "body": case_body.decode(), "secret": SECRET})
    calls.append({"call": "webhookProblem", "headers": cases[0][1], "body": body.decode(), "secret": ""})
    code, answers = run_kit(calls)
    assert code == 0, answers
    for index, (name, _, _, problem) in enumerate(cases):
        reason, verified = answers[2 * index], answers[2 * index + 1]
        if problem is None:
            assert reason is None and verified is True, name
        else:
            assert verified is False, name
            assert problem in reason, (name, reason)
    assert answers[-1] == "no webhook secret is configured"
