"""Secrets the server derives its keys from."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from facecrm.config import Settings


def server_secret(settings: Settings) -> str:
    """`FACECRM_SECRET_KEY`, or a random one created once in the data directory (mode 600)."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def derived_key(settings: Settings, purpose: str) -> bytes:
    """A key for one purpose (token signing, the audit chain...), derived from the secret."""
    return hmac.new(server_secret(settings).encode(), purpose.encode(), hashlib.sha256).digest()
