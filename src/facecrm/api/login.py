"""Staff log-in: the one path for the API and the console (throttle, check, audit, token)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from facecrm.api.ratelimit import LoginGuard
from facecrm.api.security import issue_token, read_token
from facecrm.crm import accounts, audit, db
from facecrm.crm.authz import Principal
from facecrm.crm.service import FaceCRM


class LoginThrottled(Exception):
    """Too many failures for this address or account: not even checked (HTTP 429)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many failed log-ins")
        self.retry_after = max(1, math.ceil(retry_after))


class LoginFailed(Exception):
    """Wrong username or password, or a disabled account (HTTP 401)."""


@dataclass(frozen=True, slots=True)
class LoggedIn:
    token: str
    principal: Principal


def log_in(
    crm: FaceCRM, guard: LoginGuard, username: str, password: str, address: str, channel: str
) -> LoggedIn:
    """Check a password under the guard; audited either way; a token on success."""
    wait = guard.retry_after(username, address)
    if wait > 0:
        raise LoginThrottled(wait)
    with db.transaction(crm.sessions) as session:
        user = accounts.authenticate(session, username, password)
        if user is None:
            anonymous = Principal("staff", "", username[:60], "", frozenset())
            audit.record(session, anonymous, "login_failed", channel=channel)
        else:
            principal = accounts.staff_principal(user)
            audit.record(session, principal, "login", channel=channel)
            token = issue_token(crm.settings, user.id, version=user.token_version)
    if user is None:
        guard.failed(username, address)
        raise LoginFailed
    guard.succeeded(username, address)
    return LoggedIn(token, principal)


def log_out(crm: FaceCRM, token: str) -> None:
    """Revoke this one token (session); audited. An invalid or expired token is a no-op."""
    claims = read_token(crm.settings, token)
    if claims is None:
        return
    with db.transaction(crm.sessions) as session:
        user = accounts.staff_for_token(session, claims.staff_id, claims.version, claims.token_id)
        if user is None:
            return  # already void
        accounts.revoke_token(session, user.id, claims.token_id, claims.expires_at)
        audit.record(session, accounts.staff_principal(user), "logout")
