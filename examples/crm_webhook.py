"""A store's alert webhook feeding an existing CRM: verify, de-duplicate, hand over.

facecrm POSTs each alert as JSON with `X-Facecrm-Timestamp` (Unix time) and
`X-Facecrm-Signature: sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>` under the
store's webhook secret (`PUT /api/v1/stores/{id}/config`). This receiver refuses a bad
signature and anything older than five minutes (a replay), then maps the facecrm id to
the CRM's loyalty id with the list from `facecrm customers export customers.csv`.

    FACECRM_WEBHOOK_SECRET=... python examples/crm_webhook.py customers.csv 8080

Only the standard library; put it behind your TLS proxy (facecrm sends to https only).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

MAX_AGE = 300  # seconds a delivery may take to arrive (facecrm retries for ~4 s)
MAX_BODY = 64 * 1024


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float) -> bool:
    """Whether facecrm sent exactly this body within the last MAX_AGE seconds."""
    try:
        age = now - int(timestamp)
    except ValueError:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return -60 <= age <= MAX_AGE and hmac.compare_digest(
        "sha256=" + expected.hexdigest(), signature
    )


def loyalty_ids(export_csv: str) -> dict[str, str]:
    """facecrm id -> loyalty id, from `facecrm customers export` (or GET /customers/export.csv)."""
    with open(export_csv, newline="", encoding="utf-8") as fh:
        return {row["id"]: row["loyalty_id"] for row in csv.DictReader(fh) if row["loyalty_id"]}


def to_crm(alert: dict[str, object], ids: dict[str, str]) -> dict[str, object] | None:
    """The CRM's "customer in store" activity for an alert (None: not a loyalty member)."""
    loyalty = ids.get(str(alert.get("customer_id")))
    if loyalty is None:
        return None
    return {
        "loyalty_id": loyalty,
        "type": "in_store",
        "store": alert.get("store_id"),
        "reason": alert.get("rule"),
        "at": alert.get("created_at"),
        "external_id": f"facecrm-alert-{alert.get('id')}",  # the CRM de-duplicates retries
    }


def handler(secret: str, ids: dict[str, str]) -> type[BaseHTTPRequestHandler]:
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self.send_error(413)
                return
            body = self.rfile.read(length)
            timestamp = self.headers.get("X-Facecrm-Timestamp", "")
            signature = self.headers.get("X-Facecrm-Signature", "")
            if not verify(secret, timestamp, signature, body, time.time()):
                self.send_error(401)
                return
            activity = to_crm(json.loads(body), ids)
            if activity is not None:
                print(json.dumps(activity))  # replace with your CRM's API call
            self.send_response(204)
            self.end_headers()

    return Receiver


if __name__ == "__main__":
    export, port = sys.argv[1], int(sys.argv[2])
    server = HTTPServer(
        ("0.0.0.0", port), handler(os.environ["FACECRM_WEBHOOK_SECRET"], loyalty_ids(export))
    )
    server.serve_forever()
