"""Domain errors. server/api maps each class to one gRPC status code with rich details."""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    """Base class: `message` is a one-line sentence that says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(DomainError):
    """INVALID_ARGUMENT with a google.rpc.BadRequest naming every bad field."""

    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str | None = None) -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = list(violations)
        if message is None:
            message = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message)

    @classmethod
    def field(cls, field: str, description: str) -> "InvalidArgument":
        return cls([FieldViolation(field, description)])


class NotFound(DomainError):
    """NOT_FOUND. Also what another account's object looks like: never PERMISSION_DENIED."""


class AlreadyExists(DomainError):
    """ALREADY_EXISTS."""


class FailedPrecondition(DomainError):
    """FAILED_PRECONDITION: the request is valid but the system state refuses it."""


class QuotaExceeded(DomainError):
    """RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure detail."""

    def __init__(self, subject: str, description: str) -> None:
        super().__init__(description)
        self.subject = subject
        self.description = description


class Unauthenticated(DomainError):
    """UNAUTHENTICATED: no key or a wrong key."""


class Unavailable(DomainError):
    """UNAVAILABLE: a dependency is down; the client may retry."""


class ResourceExhausted(DomainError):
    """RESOURCE_EXHAUSTED without a quota: e.g. a Tail client fell too far behind."""
