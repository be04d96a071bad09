"""Flower's credentials for local use (`tracker run`, and `tracker flower` in local mode).

Flower without authentication answers its API to anyone who can reach it, and with
FLOWER_UNAUTHENTICATED_API it also sends ``Access-Control-Allow-Origin: *`` and skips its
cross-site checks, so any web page open in the operator's browser could enqueue tasks on
127.0.0.1. With basic auth, Flower sends no CORS header and refuses requests from other
origins. So local Flower gets a password too: generated once, kept in the state
directory for its owner only, and printed at start. It goes to Flower through the
environment (FLOWER_BASIC_AUTH), never on a command line that `ps` shows.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import MutableMapping
from pathlib import Path

FLOWER_USER = "tracker"
PASSWORD_FILE = "flower-password"


def local_flower_password(state_dir: Path) -> str:
    """The local Flower password, created on first use in ``<state_dir>/flower-password``."""
    path = state_dir / PASSWORD_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        stored = path.read_text(encoding="utf-8").strip()
        if stored:
            return stored
        # An empty file (a crash mid-write): start over.
        path.unlink()
        return local_flower_password(state_dir)
    # URL-safe base64: no ':' or ',', which FLOWER_BASIC_AUTH uses as separators.
    password = secrets.token_urlsafe(18)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(password + "\n")
    return password


def require_flower_auth(environment: MutableMapping[str, str], state_dir: Path) -> str | None:
    """Set FLOWER_BASIC_AUTH to the local credentials unless the operator set their own.

    Returns how to log in, for the start-up line: ``user tracker, password …``, or None
    when FLOWER_BASIC_AUTH was already set (the operator knows it).
    """
    if ":" in environment.get("FLOWER_BASIC_AUTH", ""):
        return None
    password = local_flower_password(state_dir)
    environment["FLOWER_BASIC_AUTH"] = f"{FLOWER_USER}:{password}"
    return f"user {FLOWER_USER}, password {password}"
