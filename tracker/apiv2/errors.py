"""The error taxonomy of provider calls.

Callers choose what to do by class, never by message:

- ``TransportError``: the request did not complete (timeout, refused, reset). Retry later.
- ``HTTPError``: a non-2xx answer. 5xx: retry later. ``RateLimited`` (429): wait
  ``retry_after`` seconds before calling this provider again.
- ``InvalidResponse``: a 2xx answer we cannot understand (HTML, Cloudflare page, truncated
  JSON, a PHP fatal error, or JSON of the wrong shape). Retry later; if it
  persists the provider's circuit opens.
- ``ProviderRejected``: a well-formed top-level ``{"error": ...}``. Its subclasses say
  whether to pause the provider (``InvalidKey``), alert (``InsufficientFunds``), or give up
  on the request (``IncorrectRequest``).

Messages never contain the API key: every excerpt of a body goes through ``redact``.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class. ``action`` is the API v2 action that failed, e.g. ``"status"``.

    Whether a failed call is worth repeating is the client's decision, by class."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__(f"{action}: {message}")
        self.action = action
        self.message = message


class TransportError(ProviderError):
    """Timeout, connection refused, connection reset: the request did not complete."""


class ProviderTimeout(TransportError):
    """No answer in time: a timeout, the deadline, or the caller's soft time limit."""

    @classmethod
    def abandoned(cls, action: str) -> ProviderTimeout:
        """A call the task's soft time limit cut short: for the provider's health it is
        the timeout it would have become."""
        return cls(action, "the call was abandoned at the task's soft time limit")


class NotSent(TransportError):
    """The connection was never made (refused, DNS, connect timeout): the provider cannot
    have acted on the request, so even a non-idempotent call may be made again."""


class HTTPError(ProviderError):
    def __init__(self, action: str, status_code: int, excerpt: str) -> None:
        super().__init__(action, f"HTTP {status_code}: {excerpt}")
        self.status_code = status_code
        self.excerpt = excerpt


class RateLimited(HTTPError):
    """HTTP 429. ``retry_after`` is in seconds, from the Retry-After header when given."""

    def __init__(self, action: str, excerpt: str, retry_after: float | None) -> None:
        super().__init__(action, 429, excerpt)
        self.retry_after = retry_after


class InvalidResponse(ProviderError):
    """A 2xx answer that is not the JSON we expect. ``excerpt`` is short and key-free."""

    def __init__(self, action: str, reason: str, excerpt: str) -> None:
        super().__init__(action, f"{reason}; body starts: {excerpt!r}")
        self.reason = reason
        self.excerpt = excerpt


class NotJSON(InvalidResponse):
    """HTML, a Cloudflare page, truncated JSON, a PHP fatal error. ``block``: when PHP
    diagnostics were read around the JSON, a short, key-free excerpt of the block that
    refused the body (a fatal error, or text that is no diagnostic), else empty."""

    def __init__(self, action: str, reason: str, excerpt: str, *, block: str = "") -> None:
        super().__init__(action, f"{reason}: {block!r}" if block else reason, excerpt)
        self.reason = reason
        self.block = block


class AnswerTooLarge(InvalidResponse):
    """An answer over the size cap: not read to its end, and not an API v2 answer."""


class UnexpectedShape(InvalidResponse):
    """Valid JSON, but not the structure this action answers with."""


class UnusableRefillId(UnexpectedShape):
    """The provider accepted a refill but answered an ID we cannot store or poll (too long,
    or characters no ``refills=`` list can carry). The refill probably exists."""


class ProviderForgot(ProviderError):
    """The provider answered "not found" for nearly every ID of a call that it answered
    for before: a panel in maintenance, restored from a backup, or reached with another
    account's key. A failure of the provider, not evidence about each ID."""

    def __init__(self, action: str, missing: int, known: int) -> None:
        super().__init__(
            action,
            f"{missing} of {known} IDs it answered for before are suddenly not found; "
            "taken as a provider failure, not as news about each of them",
        )
        self.missing = missing
        self.known = known


class ProviderRejected(ProviderError):
    """A top-level ``{"error": "..."}`` answer."""

    def __init__(self, action: str, provider_message: str) -> None:
        super().__init__(action, f"provider said: {provider_message}")
        self.provider_message = provider_message


class InvalidKey(ProviderRejected):
    """The provider does not accept our API key. Pause the provider; retrying cannot help."""


class InsufficientFunds(ProviderRejected):
    """Not enough funds on the provider account."""


class IncorrectRequest(ProviderRejected):
    """The provider did not understand the request (bad action, bad parameters)."""


class ProviderRefused(ProviderRejected):
    """Any other top-level error, e.g. a refill refusal. ``classify_refill_refusal`` says more."""


class InsecureProviderURL(ProviderError):
    """The provider's URL is plain ``http://`` to another machine, and the tracker is not
    allowed to send the API key in clear text there (see ``TRACKER_ALLOW_HTTP_PROVIDERS``).
    Nothing was sent. Retrying cannot help: the operator must change the URL or opt in."""
