"""Domain errors of the crm layer; they live in `facecrm.errors` (one hierarchy).

Kept as an import path: the services, the API and older code import them from here.
"""

from __future__ import annotations

from facecrm.errors import (
    AlreadyEnrolledError,
    ConflictError,
    ConsentError,
    FacecrmError,
    FaceMismatchError,
    Forbidden,
    InvalidError,
    LoginFailedError,
    LoginThrottledError,
    NotFoundError,
)

__all__ = [
    "AlreadyEnrolledError",
    "ConflictError",
    "ConsentError",
    "FaceMismatchError",
    "FacecrmError",
    "Forbidden",
    "InvalidError",
    "LoginFailedError",
    "LoginThrottledError",
    "NotFoundError",
]
