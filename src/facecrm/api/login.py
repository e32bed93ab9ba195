"""Staff log-in and log-out with tokens: `accounts.login` holds the rule, this adds the token.

Shared by the API route and the console, so both apply the same throttle, audit and reset;
their failures are `LoginThrottledError`/`LoginFailedError` from the error hierarchy.
`accounts.login` owns its transaction (a refused attempt's audit event must be committed
although the request fails); a log-out runs in the request's session (`deps.SessionDep`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from facecrm.api.security import issue_token, read_token
from facecrm.config import Settings
from facecrm.crm import accounts
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


def log_out(session: Session, settings: Settings, token: str) -> None:
    """Revoke this one token (session); audited. An invalid or expired token is a no-op."""
    claims = read_token(settings, token)
    if claims is not None:
        accounts.logout(
            session, claims.staff_id, claims.version, claims.token_id, claims.expires_at
        )
