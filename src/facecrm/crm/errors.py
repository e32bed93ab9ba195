"""Domain errors; the API maps each to one HTTP status."""

from __future__ import annotations

from facecrm.crm.authz import Forbidden


class NotFoundError(LookupError):
    """An unknown id (404)."""


class ConflictError(ValueError):
    """The change clashes with existing data, e.g. a duplicate loyalty id (409)."""

    reason: str | None = None  # a stable machine-readable reason, when there is one


class ConsentError(PermissionError):
    """The action needs an active consent the customer has not given (409)."""


class InvalidError(ValueError):
    """A well-formed request that makes no sense, e.g. an empty name (422)."""

    reason: str | None = None


class AlreadyEnrolledError(ConflictError):
    """The face already belongs to another customer (409).

    The message never says whose: the person at the counter may not be entitled
    to know who else is enrolled (the audit trail records it).
    """

    reason = "already_enrolled"


class FaceMismatchError(InvalidError):
    """The photo is not the same person as the customer's (or the batch's) other photos (422)."""

    reason = "face_mismatch"


__all__ = [
    "AlreadyEnrolledError",
    "ConflictError",
    "ConsentError",
    "FaceMismatchError",
    "Forbidden",
    "InvalidError",
    "NotFoundError",
]
