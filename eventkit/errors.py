"""Typed errors the APIs map onto HTTP status codes."""

from __future__ import annotations


class EventKitError(Exception):
    """Base class for plumbing errors."""


class DomainError(Exception):
    """A command the rules refuse: `code` is machine-readable, `status` the HTTP status.

    Services' domain modules raise it; every service answers it as a problem document.
    """

    def __init__(self, code: str, message: str, status: int = 422, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.details = details


class ConcurrencyError(EventKitError):
    """The stream is not at the version the writer expected (HTTP 409)."""

    def __init__(self, stream_id: str, expected: int | None, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {actual}, expected {expected}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class StreamNotFound(EventKitError):
    """The stream has no events (HTTP 404 where it names a resource)."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream {stream_id!r} does not exist")
        self.stream_id = stream_id


class IdempotencyKeyReused(EventKitError):
    """The same Idempotency-Key was sent with a different request (HTTP 422)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for a different request"
        )
        self.key = key


class MigrationError(EventKitError):
    """A migration file changed after it was applied, or failed to apply."""
