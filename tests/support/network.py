"""Is something listening, and does an HTTP endpoint answer? For tests that start servers."""

from __future__ import annotations

import socket

import requests


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def answers(url: str) -> bool:
    """True when ``url`` answers 200 (no credentials sent)."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
