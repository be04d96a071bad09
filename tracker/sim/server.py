"""The simulated provider's HTTP server, and ``SimServer`` to run it inside a process.

One ``ThreadingHTTPServer`` serves both the API (``/api/v2``: a form-encoded POST, or a GET
with the same parameters in the query string) and the admin API (``/admin/...``, JSON).
HTTP/1.1 keep-alive, one daemon thread per connection, no per-request logging, and each
answer goes out in a single write (headers and body together, Nagle off) so a keep-alive
client never waits on a delayed ACK.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import replace
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from tracker.sim.admin_api import handle_admin
from tracker.sim.admin_methods import SimAdminMethods
from tracker.sim.api import KNOWN_ACTIONS, OTHER_ACTION, count_ids, handle_api
from tracker.sim.dialects import MAX_IDS_PER_CALL
from tracker.sim.faults import FaultKind, canned_reply, damage_body
from tracker.sim.provider import AdminError, SimConfig, SimProvider

API_PATHS = frozenset({"/api/v2", "/api/v2/"})
JSON_TYPE = "application/json"
_MAX_BODY = 16 * 1024 * 1024


class _SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive connections park a thread in readline(); closing must not wait for them.
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], provider: SimProvider) -> None:
        super().__init__(address, _Handler)
        self.provider = provider


def _form(raw: bytes, query: str) -> dict[str, str]:
    params = dict(parse_qsl(query, keep_blank_values=True))
    params.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    return params


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "smm-sim"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300
    server: _SimHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def __getattr__(self, name: str) -> Callable[[], None]:
        # Any other method (HEAD, OPTIONS, PROPFIND...) is routed too: BaseHTTPRequestHandler
        # answers 501 to a method it finds no do_<METHOD> for, where the API answers 405.
        if name.startswith("do_"):
            return lambda: self._route(self.command)
        raise AttributeError(name)

    # -- plumbing ------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        length = int(length_text)
        if length < 0 or length > _MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(length)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = JSON_TYPE,
        headers: Iterable[tuple[str, str]] = (),
        *,
        trickle_s: float | None = None,
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command == "HEAD":
            body = b""  # the headers GET would have, and no body (Content-Length says its size)
        try:
            if trickle_s is None:
                self.wfile.write(head + body)
                return
            self.wfile.write(head)
            for position in range(len(body)):
                self.wfile.write(body[position : position + 1])
                self.wfile.flush()
                time.sleep(trickle_s)
        except OSError:  # the client went away (e.g. a worker killed mid-request)
            self.close_connection = True

    def _send_endless(self, limit_s: float) -> None:
        """An answer with no end: JSON-looking bytes until the client hangs up, or the limit."""
        self.close_connection = True
        chunk = b'{"1":{"status":"Pending"},' * 2048
        deadline = time.monotonic() + limit_s
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
            while time.monotonic() < deadline:
                self.wfile.write(chunk)
        except OSError:
            pass

    def _send_json(
        self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self._send(status, json.dumps(payload).encode(), JSON_TYPE, headers)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send_json(400, {"error": "bad request body"})
            return
        try:
            if url.path in API_PATHS:
                # Real panels take GET with the parameters in the query string as well
                # (PHP reads $_REQUEST), and some clients send nothing else.
                if method in ("GET", "POST"):
                    self._api(raw, url.query)
                else:
                    self._send_json(405, {"error": "Method not allowed"}, (("Allow", "GET, POST"),))
            elif url.path.startswith("/admin") or url.path == "/count":
                self._admin(method, url.path, url.query, raw)
            else:
                self._send_json(404, {"error": "Not found"})
        except Exception:  # noqa: BLE001 - a sim bug must answer 500, not kill the thread
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._send_json(500, {"error": "sim internal error"})

    # -- the API ---------------------------------------------------------------------------

    def _api(self, raw: bytes, query: str) -> None:
        provider = self.server.provider
        params = _form(raw, query)
        action, ids = count_ids(params)
        # Unknown actions share one counter, so junk requests cannot grow the stats.
        label = action if action in KNOWN_ACTIONS else OTHER_ACTION
        provider.stats.record_call(label, ids, ids > MAX_IDS_PER_CALL, time.monotonic())
        latency_ms = provider.config.latency_ms
        if latency_ms > 0:
            time.sleep(latency_ms / 1000.0)
        rule = provider.faults.pick(action)
        if rule is not None:
            if rule.kind is FaultKind.ENDLESS:
                self._send_endless(rule.seconds if rule.seconds is not None else 30.0)
                return
            if rule.kind is FaultKind.DROP_CONNECTION:
                self.close_connection = True
                return
            canned = canned_reply(rule)
            if canned is not None:
                self._send(canned.status, canned.body, canned.content_type, canned.headers)
                return
            if rule.kind is FaultKind.SLOW:
                time.sleep(rule.seconds if rule.seconds is not None else 1.0)
            elif rule.kind is FaultKind.HOLD:
                provider.gate.wait(rule.seconds)
        body = json.dumps(handle_api(provider, params), separators=(",", ":")).encode()
        if rule is not None:
            if rule.kind is FaultKind.ACT_THEN_DROP:
                self.close_connection = True
                return
            if rule.kind is FaultKind.ACT_THEN_HANG:
                time.sleep(rule.seconds if rule.seconds is not None else 60.0)
            if rule.kind is FaultKind.TRICKLE:
                self._send(200, body, trickle_s=rule.seconds if rule.seconds is not None else 0.2)
                return
            body = damage_body(rule, body)
        self._send(200, body)

    # -- the admin API -----------------------------------------------------------------------

    def _admin(self, method: str, path: str, query: str, raw: bytes) -> None:
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            self._send_json(400, {"error": "the body must be JSON"})
            return
        status, payload = handle_admin(
            self.server.provider, method, path, dict(parse_qsl(query)), body
        )
        self._send_json(status, payload)


class SimServer(SimAdminMethods):
    """The simulated provider on a background thread, plus direct admin access.

    ``with SimServer(dialect="singles", speed=60) as sim: ...`` starts it on a free port;
    ``sim.url`` is the API v2 URL to give a client. The admin methods mirror the admin
    HTTP API (and ``SimAdmin``) but call the provider directly.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: SimConfig | None = None,
        **settings: Any,
    ) -> None:
        """``settings`` are ``SimConfig`` fields (dialect, speed, seed, api_key, ...)."""
        unknown = set(settings) - set(SimConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown SimServer settings: {', '.join(sorted(unknown))}")
        if "balance" in settings:
            settings["balance"] = Decimal(str(settings["balance"]))
        base = replace(config if config is not None else SimConfig(), **settings)
        self.provider = SimProvider(base)
        self._address = (host, port)
        self._httpd: _SimHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._httpd is not None:
            return
        self._httpd = _SimHTTPServer(self._address, self.provider)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"sim-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.provider.gate.release()
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_until(self, stop: threading.Event, check_s: float = 0.5) -> None:
        """Block until ``stop`` is set (the CLI's foreground loop)."""
        while not stop.wait(check_s):
            pass

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the sim is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


    # -- admin, in process -------------------------------------------------------------------

    def _seed(self, body: dict[str, Any]) -> tuple[int, int]:
        batch = self.provider.seed_orders(body)
        return batch.first_id, batch.last_id

    def truth(self, ids: Iterable[int]) -> dict[int, dict[str, Any] | None]:
        orders = self.provider.truth(ids)["orders"]
        return {int(key): value for key, value in orders.items()}

    def refill_truth(self, ids: Iterable[int]) -> dict[int, dict[str, Any] | None]:
        refills = self.provider.refill_truth(ids)["refills"]
        return {int(key): value for key, value in refills.items()}

    def stats(self) -> dict[str, Any]:
        return self.provider.stats_snapshot()

    def reset_stats(self) -> None:
        self.provider.stats.reset()
        self.provider.faults.reset_counts()

    def _add_fault(self, body: dict[str, Any]) -> None:
        status, payload = handle_admin(self.provider, "POST", "/admin/faults", {}, body)
        if status != 200:
            raise ValueError(payload["error"])

    def clear_faults(self) -> int:
        return self.provider.faults.clear()

    def set_config(self, **changes: Any) -> dict[str, Any]:
        try:
            return self.provider.configure(changes)
        except AdminError as error:
            raise ValueError(str(error)) from None

    def release_held(self) -> int:
        return self.provider.gate.release()

    def drop(self, order: int, amount: int) -> dict[str, Any]:
        try:
            return self.provider.drop(order, amount)
        except AdminError as error:
            raise ValueError(str(error)) from None

    def count(self, order: int) -> dict[str, Any] | None:
        return self.provider.count(order)

    def list_service_again(self, service: int, category: str, **changes: Any) -> dict[str, Any]:
        try:
            return self.provider.list_service_again({"service": service, "category": category, **changes})
        except AdminError as error:
            raise ValueError(str(error)) from None

    def advance(self, seconds: float) -> float:
        return self.provider.advance(seconds)

    def reset(self) -> None:
        self.provider.reset()
