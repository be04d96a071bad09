"""Finding a registered provider by the name the shop or the operator gives.

Apart from the registry so that commands which only read (``tracker orders``) do not
import the key encryption.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from tracker.db.models import Provider


class UnknownProvider(LookupError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        listing = ", ".join(sorted(known)) or "none yet; add one with `tracker provider add`"
        super().__init__(f"unknown provider {name!r} (known providers: {listing})")
        self.name = name


def provider_by_name(session: Session, name: object) -> Provider:
    if not isinstance(name, str) or not name.strip():
        raise UnknownProvider(repr(name), session.scalars(select(Provider.name)).all())
    provider = session.scalar(select(Provider).where(Provider.name == name.strip()))
    if provider is None:
        raise UnknownProvider(name, session.scalars(select(Provider.name)).all())
    return provider
