"""Staff tokens (signed JWT) and the secret that signs them."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime, timedelta

import jwt

from facecrm.config import Settings

ALGORITHM = "HS256"


def secret_key(settings: Settings) -> str:
    """The configured key, or a random one created once in the data directory (mode 600)."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def issue_token(settings: Settings, staff_id: str, minutes: int | None = None) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": staff_id,
        "iat": now,
        "exp": now + timedelta(minutes=minutes or settings.token_minutes),
        "typ": "staff",
    }
    return jwt.encode(claims, secret_key(settings), algorithm=ALGORITHM)


def staff_id_from_token(settings: Settings, token: str) -> str | None:
    """The staff id of a valid, unexpired token, else None."""
    try:
        claims = jwt.decode(token, secret_key(settings), algorithms=[ALGORITHM])
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) and claims.get("typ") == "staff" else None
