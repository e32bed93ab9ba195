""" "Not this person": disputed matches, and the per-store report that feeds recalibration.

A dispute is staff saying a match was wrong. On an alert (an agent's visit) the alert
service closes the alert and marks the visit disputed, which takes it out of the
customer's history (`activity.visits`, the card) and out of the rules (visit counts, last
visit); on a phone look-up there is no visit, only the match. Either way one
`MatchDispute` row and one audited `match_dispute` event are written.

The report (`report`, `record`) holds template-free facts only -- when, which store and
camera, the customer id the system named, the similarity and the threshold then -- so it
can leave the server for `facecrm eval --disputes FILE`, which treats every disputed score
as an impostor score seen in production (see `facecrm.eval.disputes`).

A look-up has no row to point at, so the look-up's answer carries a `ref`: the match's
facts signed with a key derived from the server secret. Disputing it needs the same staff
member within `REF_MINUTES`, and a ref is disputed once (`match_disputes.ref` is unique).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from facecrm import keys
from facecrm.config import Settings
from facecrm.crm import accounts, audit
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError, NotFoundError
from facecrm.crm.models import Alert, Customer, MatchDispute, Visit, utcnow

FORMAT = "facecrm-disputes/1"  # the first line of an export; `facecrm eval` checks it
REF_MINUTES = 30  # how long a look-up's answer can be disputed
_REF_PURPOSE = "lookup-dispute"
MAX_CAMERA = 100


def camera_label(raw: str | None) -> str | None:
    """A camera as staff and the report may see it: never a URL's user, password or query.

    Agents name cameras by their source (`rtsp://user:pass@host/stream`, a device index,
    a file); only host and path of a URL are kept.
    """
    if not raw:
        return None
    text = "".join(c for c in raw if c.isprintable()).strip()
    if "://" in text:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        text = f"{parts.scheme}://{host}{port}{parts.path}"
    return text[:MAX_CAMERA] or None


# -- look-up refs ------------------------------------------------------------------------


def _sign(settings: Settings, body: bytes) -> str:
    key = keys.derived_key(settings, _REF_PURPOSE)
    return base64.urlsafe_b64encode(hmac.new(key, body, hashlib.sha256).digest()[:18]).decode()


def lookup_ref(
    settings: Settings,
    principal: Principal,
    customer_id: str,
    similarity: float,
    store_id: str | None,
    now: datetime | None = None,
) -> str | None:
    """A signed ref for the answer of a phone look-up (None: no store, nothing to report)."""
    if store_id is None or principal.kind != "staff":
        return None
    at = (now or utcnow()).astimezone(UTC)
    facts = {
        "c": customer_id,
        "s": round(float(similarity), 4),
        "st": store_id,
        "p": principal.id,
        "t": int(at.timestamp()),
        "n": secrets.token_urlsafe(9),
    }
    body = json.dumps(facts, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + _sign(settings, body)


def _read_ref(settings: Settings, ref: str) -> dict[str, Any]:
    encoded, _, signature = ref.partition(".")
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidError("this look-up cannot be disputed", reason="bad_ref") from exc
    if not hmac.compare_digest(_sign(settings, body), signature):
        raise InvalidError("this look-up cannot be disputed", reason="bad_ref")
    facts: dict[str, Any] = json.loads(body)
    return facts


# -- disputes -------------------------------------------------------------------------------


def dispute_visit(
    session: Session, principal: Principal, alert: Alert, threshold: float
) -> MatchDispute:
    """Mark the alert's visit disputed and record the dispute (the alert service closes
    the alert; its caller checked the principal's store)."""
    principal.require(Permission.ALERTS)
    if alert.customer_id is None:
        raise InvalidError("this alert is not about a customer", reason="not_a_match")
    visit = session.get(Visit, alert.visit_id) if alert.visit_id is not None else None
    if visit is not None:
        visit.disputed = True
    dispute = MatchDispute(
        store_id=alert.store_id,
        customer_id=alert.customer_id,
        source="alert",
        camera=visit.camera if visit else None,
        matched_at=visit.at if visit else alert.created_at,
        similarity=visit.similarity if visit else None,
        threshold=round(threshold, 4),
        disputed_by=principal.id if principal.kind == "staff" else None,
        visit_id=visit.id if visit else None,
        alert_id=alert.id,
    )
    return _record(session, principal, dispute)


def dispute_lookup(
    session: Session, principal: Principal, settings: Settings, ref: str, threshold: float
) -> MatchDispute:
    """ "Not this person" on a phone look-up's answer (`ref` from `lookup_ref`)."""
    principal.require(Permission.IDENTIFY)
    facts = _read_ref(settings, ref)
    at = datetime.fromtimestamp(int(facts["t"]), UTC)
    if facts["p"] != principal.id:
        raise InvalidError("only who looked the customer up can dispute it", reason="bad_ref")
    if utcnow() - at > timedelta(minutes=REF_MINUTES):
        raise InvalidError(
            f"a look-up can be disputed for {REF_MINUTES} minutes only", reason="ref_expired"
        )
    principal.require_store(facts["st"])
    nonce = str(facts["n"])
    if session.scalar(select(MatchDispute.id).where(MatchDispute.ref == nonce)) is not None:
        raise ConflictError("this look-up has already been disputed", reason="already_disputed")
    if session.get(Customer, facts["c"]) is None:
        raise NotFoundError("the customer of this look-up no longer exists")
    dispute = MatchDispute(
        store_id=facts["st"],
        customer_id=facts["c"],
        source="lookup",
        camera="phone",
        matched_at=at,
        similarity=float(facts["s"]),
        threshold=round(threshold, 4),
        disputed_by=principal.id,
        ref=nonce,
    )
    return _record(session, principal, dispute)


def _record(session: Session, principal: Principal, dispute: MatchDispute) -> MatchDispute:
    session.add(dispute)
    session.flush()
    audit.record(
        session,
        principal,
        "match_dispute",
        dispute.customer_id,
        dispute.store_id,
        source=dispute.source,
        similarity=dispute.similarity,
        alert_id=dispute.alert_id,
    )
    return dispute


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = 500
    offset: int = 0


def report(
    session: Session, principal: Principal, store_id: str, window: Window | None = None
) -> Sequence[MatchDispute]:
    """A store's disputed matches, oldest first; audited (it names customers)."""
    window = window or Window()
    principal.require(Permission.DISPUTES_READ)
    principal.require_store(store_id)
    accounts.get_store(session, store_id)
    stmt = (
        select(MatchDispute)
        .where(MatchDispute.store_id == store_id)
        .order_by(MatchDispute.disputed_at, MatchDispute.id)
        .offset(window.offset)
    )
    if window.limit is not None:
        stmt = stmt.limit(window.limit)
    if window.since is not None:
        stmt = stmt.where(MatchDispute.disputed_at >= window.since)
    if window.until is not None:
        stmt = stmt.where(MatchDispute.disputed_at < window.until)
    rows = session.scalars(stmt).all()
    audit.record(session, principal, "dispute_report", None, store_id, disputes=len(rows))
    return rows


def record(d: MatchDispute) -> dict[str, object]:
    """One line of the export (`FORMAT`): the facts `facecrm eval --disputes` reads."""
    return {
        "store_id": d.store_id,
        "customer_id": d.customer_id,
        "source": d.source,
        "camera": d.camera,
        "matched_at": d.matched_at.isoformat(),
        "disputed_at": d.disputed_at.isoformat(),
        "similarity": d.similarity,
        "threshold": d.threshold,
    }


def header(store_ids: Sequence[str], model_id: str) -> dict[str, object]:
    """The first line of an export file."""
    return {"format": FORMAT, "model_id": model_id, "stores": list(store_ids)}
