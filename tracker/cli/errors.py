"""Errors the CLI turns into one clear line on stderr instead of a traceback."""

from __future__ import annotations


class CLIError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def known_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import OperationalError

    from tracker.config import ConfigError
    from tracker.apiv2.errors import ProviderError
    from tracker.providers.secrets import SecretKeyError
    from tracker.providers.registry import ProviderConfigError
    from tracker.providers.lookup import UnknownProvider

    return (
        ConfigError,
        ProviderError,
        SecretKeyError,
        UnknownProvider,
        ProviderConfigError,
        OperationalError,
    )
