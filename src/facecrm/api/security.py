"""Staff tokens (signed JWT) and the secret that signs them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

from facecrm.config import Settings
from facecrm.keys import server_secret

ALGORITHM = "HS256"


def issue_token(settings: Settings, staff_id: str, minutes: int | None = None) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": staff_id,
        "iat": now,
        "exp": now + timedelta(minutes=minutes or settings.token_minutes),
        "typ": "staff",
    }
    return jwt.encode(claims, server_secret(settings), algorithm=ALGORITHM)


def staff_id_from_token(settings: Settings, token: str) -> str | None:
    """The staff id of a valid, unexpired token, else None."""
    try:
        claims = jwt.decode(token, server_secret(settings), algorithms=[ALGORITHM])
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) and claims.get("typ") == "staff" else None
