"""A shop's webhook endpoint for the outbox tests: a real HTTP server on 127.0.0.1.

It records every POST it gets (event ID, and whether it answered 2xx), can take its time
over each answer (``delay_s``, like a slow shop), and can refuse the first POSTs of given
event IDs with a 503.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.http_server import BackgroundServer
from tracker.outbox.webhooks import EVENT_ID_HEADER


@dataclass(frozen=True, slots=True)
class Post:
    event_id: str
    accepted: bool


@dataclass
class _State:
    delay_s: float
    refuse: Counter[str]
    posts: list[Post] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as a shop's web server has it: one connection per delivering worker.
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        state = self.server.state
        event_id = self.headers.get(EVENT_ID_HEADER, "")
        if state.delay_s:
            time.sleep(state.delay_s)
        with state.lock:
            accepted = state.refuse[event_id] <= 0
            if not accepted:
                state.refuse[event_id] -= 1
            state.posts.append(Post(event_id, accepted))
        self.send_response(204 if accepted else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class ShopEndpoint(BackgroundServer):
    def __init__(self, *, delay_s: float = 0.0, refuse: dict[str, int] | None = None, host: str = "127.0.0.1") -> None:
        server = _Server((host, 0), _Handler)
        server.state = _State(delay_s, Counter(refuse or {}))
        super().__init__(server)
        self._shop_server = server

    @property
    def url(self) -> str:
        return f"{self.base_url}/hooks/tracker"

    def refuse(self, event_id: str, times: int = 1) -> None:
        with self._shop_server.state.lock:
            self._shop_server.state.refuse[event_id] += times

    @property
    def posts(self) -> list[Post]:
        with self._shop_server.state.lock:
            return list(self._shop_server.state.posts)

    def accepted_ids(self) -> list[str]:
        """Event IDs answered 2xx, in the order the endpoint answered them."""
        return [post.event_id for post in self.posts if post.accepted]
