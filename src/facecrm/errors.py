"""One error hierarchy: every error facecrm raises on purpose derives from `FacecrmError`.

Each class carries what its callers need to translate it without knowing it: the HTTP
`status` and stable `reason` (a machine-readable code in problem+json) for the API and
the console, and the `exit_code` for the CLI. `api.problems` and `cli` each have ONE
handler for the whole hierarchy, so a new error class needs no new handler.

The classes are ordinary exceptions, never dataclasses: `raise` and the server set
`__traceback__` and notes on them. Each also keeps the built-in base it had before
(`ValueError`, `LookupError`, ...) so existing `except ValueError` code keeps working.
Errors specific to one module live there and derive from these (`vision.image.ImageError`,
`vision.pipeline.QualityError`, `crm.service.EnrollmentError`, `crypto.CryptoError`, ...).
"""

from __future__ import annotations

import math


class FacecrmError(Exception):
    """Base class: an operation refused or failed for a reason facecrm can name.

    `status`, `reason` and `exit_code` are class-level defaults; an instance may carry its
    own `reason` (e.g. an image's or a quality gate's). `status >= 500` means the fault is
    on the server's side: the API logs it and does not show the message to the client.
    """

    status: int = 500
    reason: str = "internal_error"
    exit_code: int = 1  # a refused operation; 2 stays Click's usage error

    def __init__(self, *args: object, reason: str | None = None) -> None:
        super().__init__(*args)
        if reason is not None:
            self.reason = reason

    @property
    def detail(self) -> str:
        """The human-readable message for a problem+json `detail` or a CLI error line."""
        return str(self)

    def headers(self) -> dict[str, str]:
        """Extra HTTP response headers (e.g. `Retry-After`)."""
        return {}

    def extra(self) -> dict[str, object]:
        """Extra problem+json members besides `reason`."""
        return {}


class NotFoundError(FacecrmError, LookupError):
    """An unknown id (404)."""

    status = 404
    reason = "not_found"


class ConflictError(FacecrmError, ValueError):
    """The change clashes with existing data, e.g. a duplicate loyalty id (409)."""

    status = 409
    reason = "conflict"


class ConsentError(FacecrmError, PermissionError):
    """The action needs an active consent the customer has not given (409)."""

    status = 409
    reason = "consent_required"


class InvalidError(FacecrmError, ValueError):
    """A well-formed request that makes no sense, e.g. an empty name (422)."""

    status = 422
    reason = "invalid"


class Forbidden(FacecrmError, PermissionError):
    """The principal may not do this (403)."""

    status = 403
    reason = "forbidden"


class AlreadyEnrolledError(ConflictError):
    """The face already belongs to another customer (409).

    The message never says whose: the person at the counter may not be entitled
    to know who else is enrolled (the audit trail records it).
    """

    reason = "already_enrolled"


class FaceMismatchError(InvalidError):
    """The photo is not the same person as the customer's (or the batch's) other photos (422)."""

    reason = "face_mismatch"


class LoginThrottledError(FacecrmError):
    """Too many failed log-ins for this address or account: not even checked (429).

    `retry_after` (whole seconds, at least 1) goes into the `Retry-After` header and the
    problem body, so a client can wait exactly as long as the guard asks.
    """

    status = 429
    reason = "login_throttled"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"too many failed log-ins; try again in {self.retry_after} s")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}

    def extra(self) -> dict[str, object]:
        return {"retry_after": self.retry_after}


class LoginFailedError(FacecrmError):
    """Wrong username or password, or a disabled account: one answer for all three (401).

    The API's problem handler adds `WWW-Authenticate: Bearer` to every 401.
    """

    status = 401
    reason = "login_failed"

    def __init__(self) -> None:
        super().__init__("wrong username or password")


class ConfigError(FacecrmError):
    """The settings or the installation cannot work (e.g. a bad `FACECRM_*` value).

    A fault of the operator, not of the request: 500 in the API, one line in the CLI.
    """

    reason = "misconfigured"


class SchemaOutdatedError(FacecrmError):
    """The database's schema is not the one this facecrm needs (503; one CLI line, exit 1).

    Only `facecrm migrate`, the server's start, `facecrm demo` and `facecrm.open` change
    the schema; every other process checks it and stops with this instead of upgrading a
    database that a running server (of the old version) may still be using.
    """

    status = 503
    reason = "schema_outdated"


class MissingExtraError(ConfigError):
    """What was asked needs an optional part of facecrm that is not installed.

    A store box installs `facecrm[agent]` only; the server's commands then say which extra
    to add instead of failing on an import deep inside (see `facecrm.extras`). Over HTTP
    it is a 503: the request was fine and this server cannot serve it (a till falls back
    to card or PIN); the message names a command for the operator, so it is logged and
    kept from the client like a 500's.
    """

    status = 503
    reason = "missing_extra"

    def __init__(self, extra: str, module: str) -> None:
        self.extra_name, self.module = extra, module  # `extra()` is the problem members
        super().__init__(
            f"this needs the {extra} extra ({module} is not installed):"
            f" pip install 'facecrm[{extra}]'"
        )


__all__ = [
    "AlreadyEnrolledError",
    "ConfigError",
    "ConflictError",
    "ConsentError",
    "FaceMismatchError",
    "FacecrmError",
    "Forbidden",
    "InvalidError",
    "LoginFailedError",
    "LoginThrottledError",
    "MissingExtraError",
    "NotFoundError",
    "SchemaOutdatedError",
]
