"""A misbehaving provider that echoes what it was sent, API key included.

Some real panels do this: a debug page that prints the form, an error message that
repeats the key, a JSON answer that mirrors the request. The secrets test points a
provider at this server to prove the key still never reaches a log, an exception, the
CLI's output or Flower.

Every answer is a failure of some kind, and each carries the key in another spelling:
raw, URL-encoded (the form body as sent), and JSON-escaped.
"""

from __future__ import annotations

import itertools
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from tests.support.http_server import BackgroundServer


class _Handler(BaseHTTPRequestHandler):
    server: _EchoServer

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
        form = dict(parse_qsl(raw, keep_blank_values=True))
        key, action = form.get("key", ""), form.get("action", "")
        self.server.requests += 1
        if action == "services":
            # A well-formed error that repeats the key.
            self._answer(200, "application/json", json.dumps({"error": f"Unknown service list for key {key}"}))
        elif action == "balance":
            self._answer(200, "text/html", f"<html><body><pre>{raw}</pre><p>key: {key}</p></body></html>")
        else:
            variant = next(self.server.variants)
            if variant == 0:
                # A server error page that prints the request.
                self._answer(500, "text/html", f"<h1>500</h1><pre>POST {self.path}\n{raw}\nkey={key}</pre>")
            elif variant == 1:
                # JSON that mirrors the request instead of answering it.
                self._answer(200, "application/json", json.dumps({"received": form, "echo": raw}))
            else:
                # A 400 with a JSON error naming the key.
                self._answer(400, "application/json", json.dumps({"error": f"Bad request: key={key}&action={action}"}))

    def _answer(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    requests = 0
    variants: itertools.cycle[int]


class EchoProvider(BackgroundServer):
    def __init__(self) -> None:
        server = _EchoServer(("127.0.0.1", 0), _Handler)
        server.variants = itertools.cycle(range(3))
        super().__init__(server)
        self._echo_server = server

    @property
    def url(self) -> str:
        return f"{self.base_url}/api/v2"

    @property
    def requests(self) -> int:
        return self._echo_server.requests
