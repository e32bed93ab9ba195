"""Domain errors; the API maps each to one HTTP status."""

from __future__ import annotations

from facecrm.crm.authz import Forbidden


class NotFoundError(LookupError):
    """An unknown id (404)."""


class ConflictError(ValueError):
    """The change clashes with existing data, e.g. a duplicate loyalty id (409)."""


class ConsentError(PermissionError):
    """The action needs an active consent the customer has not given (409)."""


class InvalidError(ValueError):
    """A well-formed request that makes no sense, e.g. an empty name (422)."""


__all__ = ["ConflictError", "ConsentError", "Forbidden", "InvalidError", "NotFoundError"]
