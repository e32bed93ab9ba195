"""Signed webhooks: each store may forward its alerts to its own system.

The body is JSON; `X-Facecrm-Signature: sha256=<hex>` is the HMAC-SHA256 of
`<timestamp>.<body>` with the store's secret, `X-Facecrm-Timestamp` the Unix
time, so receivers can reject forgeries and replays. Delivery runs in a
background thread with retries and never blocks the request that raised the
alert.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time

import httpx

log = logging.getLogger("facecrm.webhooks")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def deliver(url: str, secret: str, payload: dict[str, object], attempts: int = 4) -> None:
    """POST `payload` to `url` in the background (retries with backoff)."""

    def _run() -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        for attempt in range(attempts):
            timestamp = str(int(time.time()))
            headers = {
                "content-type": "application/json",
                "x-facecrm-timestamp": timestamp,
                "x-facecrm-signature": signature(secret, timestamp, body),
            }
            try:
                response = httpx.post(url, content=body, headers=headers, timeout=5)
                if response.status_code < 500:
                    return
            except httpx.HTTPError as exc:
                log.warning(
                    "webhook delivery failed (attempt %d): %s", attempt + 1, type(exc).__name__
                )
            time.sleep(0.5 * 2**attempt)

    threading.Thread(target=_run, daemon=True, name="webhook").start()
