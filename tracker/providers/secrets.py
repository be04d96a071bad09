"""API keys at rest: encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`).

The encryption key comes from ``TRACKER_SECRET_KEY``: a Fernet key, or several separated
by commas to rotate (the first encrypts, all decrypt). Outside local mode the tracker
refuses to store provider keys without it. In local mode, when it is unset, a key is
generated once into ``<state dir>/secret.key`` (mode 0600), so even a laptop install never
writes a plain API key to its database.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from tracker.config import Settings


class SecretKeyError(RuntimeError):
    """The encryption key is missing or cannot decrypt what is stored."""


def _as_fernet(material: str) -> Fernet:
    material = material.strip()
    try:
        return Fernet(material.encode())
    except ValueError:
        # Not a Fernet key: accept any long random passphrase by hashing it to 32 bytes.
        digest = hashlib.sha256(material.encode()).digest()
        return Fernet(base64.urlsafe_b64encode(digest))


def _local_key_file(settings: Settings, *, create: bool) -> str | None:
    path = Path(settings.state_dir) / "secret.key"
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return key


def cipher(settings: Settings, *, for_writing: bool) -> MultiFernet:
    material = settings.secret_key
    if material is None:
        if not settings.local_mode:
            raise SecretKeyError(
                "TRACKER_SECRET_KEY is not set: outside local mode the tracker will not "
                "store or read provider API keys without an encryption key"
            )
        material = _local_key_file(settings, create=for_writing)
        if material is None:
            raise SecretKeyError(
                f"no encryption key: TRACKER_SECRET_KEY is unset and "
                f"{Path(settings.state_dir) / 'secret.key'} does not exist"
            )
    keys = [_as_fernet(part) for part in material.split(",") if part.strip()]
    if not keys:
        raise SecretKeyError("TRACKER_SECRET_KEY is empty")
    return MultiFernet(keys)


def encrypt_api_key(settings: Settings, api_key: str) -> str:
    return cipher(settings, for_writing=True).encrypt(api_key.encode()).decode()


def decrypt_api_key(settings: Settings, token: str) -> str:
    try:
        return cipher(settings, for_writing=False).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretKeyError(
            "cannot decrypt a stored provider key: TRACKER_SECRET_KEY differs from the key "
            "it was stored with (re-add the provider, or add the old key after a comma)"
        ) from None


# Keys shorter than this show no character at all: four of a 6-character key would give
# most of it away. From 12 on, the last four are at most a third of the key.
KEY_HINT_MIN_LENGTH = 12


def key_hint(api_key: str) -> str:
    """What listings show instead of the key: ``****`` plus its last four characters, for
    keys of at least ``KEY_HINT_MIN_LENGTH`` characters; ``****`` alone for shorter ones."""
    tail = api_key[-4:] if len(api_key) >= KEY_HINT_MIN_LENGTH else ""
    return f"****{tail}"
