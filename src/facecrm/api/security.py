"""Staff tokens (signed JWT) and the secret that signs them.

A token names the user (`sub`), the user's token version at issue (`ver`: a
password change or disabling bumps it, voiding every older token) and its own
id (`jti`: a log-out revokes that one session). `exp`, `iat`, `sub` and `typ`
are required: a token without an expiry would be valid forever.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from facecrm.config import Settings
from facecrm.keys import server_secret

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "sub", "typ"]


@dataclass(frozen=True, slots=True)
class TokenClaims:
    staff_id: str
    version: int
    token_id: str
    expires_at: datetime


def issue_token(
    settings: Settings, staff_id: str, minutes: int | None = None, *, version: int = 0
) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": staff_id,
        "iat": now,
        "exp": now + timedelta(minutes=minutes or settings.token_minutes),
        "typ": "staff",
        "ver": version,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, server_secret(settings), algorithm=ALGORITHM)


def read_token(settings: Settings, token: str) -> TokenClaims | None:
    """The claims of a well-signed, unexpired staff token, else None (not yet checked
    against the database: see `accounts.staff_for_token`)."""
    try:
        claims = jwt.decode(
            token,
            server_secret(settings),
            algorithms=[ALGORITHM],
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.PyJWTError:
        return None
    sub, ver, jti = claims.get("sub"), claims.get("ver"), claims.get("jti")
    if claims.get("typ") != "staff" or not isinstance(sub, str):
        return None
    if not isinstance(ver, int) or isinstance(ver, bool) or not isinstance(jti, str):
        return None
    return TokenClaims(sub, ver, jti, datetime.fromtimestamp(claims["exp"], UTC))
