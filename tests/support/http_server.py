"""A test's own HTTP server (a fake provider, a shop's endpoint) answering on a background
thread until the block ends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import HTTPServer
from typing import Self


@contextmanager
def serving(server: HTTPServer, poll_interval: float = 0.1) -> Iterator[str]:
    """``server`` answering on a daemon thread; yields its ``http://127.0.0.1:PORT``. When
    the block ends it is shut down and its socket closed, so no thread or port is left."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class BackgroundServer(ExitStack):
    """Base of a fake server object: ``with`` serves ``self._server`` until the block ends."""

    def __init__(self, server: HTTPServer) -> None:
        super().__init__()
        self._server = server

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        super().__enter__()
        self.enter_context(serving(self._server))
        return self
