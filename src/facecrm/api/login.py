"""Staff log-in and log-out with tokens: `accounts.login` holds the rule, this adds the token.

Shared by the API route and the console, so both apply the same throttle, audit and reset;
their failures are `LoginThrottledError`/`LoginFailedError` from the error hierarchy.
"""

from __future__ import annotations

from dataclasses import dataclass

from facecrm.api.security import issue_token, read_token
from facecrm.crm import accounts, db
from facecrm.crm.authz import Principal
from facecrm.crm.service import FaceCRM
from facecrm.crm.throttle import LoginGuard


@dataclass(frozen=True, slots=True)
class LoggedIn:
    token: str
    principal: Principal


def log_in(
    crm: FaceCRM, guard: LoginGuard, username: str, password: str, address: str, channel: str
) -> LoggedIn:
    """A bearer token for a successful `accounts.login`; its errors pass through."""
    user = accounts.login(crm.sessions, guard, username, password, address, channel)
    token = issue_token(crm.settings, user.id, version=user.token_version)
    return LoggedIn(token, accounts.staff_principal(user))


def log_out(crm: FaceCRM, token: str) -> None:
    """Revoke this one token (session); audited. An invalid or expired token is a no-op."""
    claims = read_token(crm.settings, token)
    if claims is None:
        return
    with db.transaction(crm.sessions) as session:
        accounts.logout(
            session, claims.staff_id, claims.version, claims.token_id, claims.expires_at
        )
