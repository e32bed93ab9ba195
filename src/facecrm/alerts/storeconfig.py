"""A store's alert configuration as its managers see and change it: the rules in force
(with their names, values, defaults and descriptions), the webhook URL, its secret
(generated here and shown once) and the webhook's delivery log.

Reading and changing a store's configuration is for the store's managers and for
administrators (`Permission.DEVICES_MANAGE` in that store, like `PUT /stores/{id}/config`);
another store's configuration is refused (403) whatever the path.

The delivery log holds, per attempt, the event's id (`alert:42`, `test:…`), the attempt
number, the HTTP status, whether it was taken and a truncated error text: nothing about
the customer and nothing the receiver answered. Rows older than `DELIVERY_LOG_DAYS` are
pruned whenever a new one is written.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Text, cast, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from facecrm.alerts import rules, webhooks, zones
from facecrm.crm import accounts, audit, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError
from facecrm.crm.models import (
    CameraHealth,
    StoreAnalytics,
    StoreConfig,
    WebhookDelivery,
    new_id,
    utcnow,
)

log = logging.getLogger("facecrm.webhooks")

SECRET_PREFIX = "whsec_"
DELIVERY_LOG_DAYS = 30  # long enough to debug a receiver, short enough to hold little
ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class RuleView:
    """One rule in force: what it is set to, what it would be by default, what it does."""

    name: str
    description: str
    value: dict[str, Any]
    default: dict[str, Any]
    overridden: bool  # whether the store set anything for it


@dataclass(frozen=True, slots=True)
class EffectiveConfig:
    """What a store runs with: every rule (defaults filled in) and its webhook (not its
    secret); `problems` are stored settings that were unreadable and are not applied."""

    store_id: str
    rules: list[RuleView]
    webhook_url: str | None
    webhook_secret_set: bool
    problems: list[str]
    # anonymous analytics (issue 13): zones per camera, and the two switches (off by default)
    zones: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    demographics_enabled: bool = False
    sentiment_enabled: bool = False


def _require(principal: Principal, store_id: str) -> None:
    principal.require(Permission.DEVICES_MANAGE)
    principal.require_store(store_id)


def rules_in_force(session: Session, store_id: str) -> tuple[rules.RuleSettings, list[str]]:
    """The store's rules and what was wrong with the stored row (see `rules.stored`).

    The column is read as text and parsed here, so even malformed JSON only falls back
    to the defaults: a row written before validation never breaks a visit or a page.
    """
    text = session.scalar(
        select(cast(StoreConfig.rules, Text)).where(StoreConfig.store_id == store_id)
    )
    try:
        raw = json.loads(text) if text is not None else None
    except ValueError:
        return rules.RuleSettings(), ["rules are not valid JSON"]
    return rules.stored(raw)


def effective(session: Session, principal: Principal, store_id: str) -> EffectiveConfig:
    """The configuration in force in the store (`GET /stores/{id}/config`, the rules page)."""
    _require(principal, store_id)
    accounts.get_store(session, store_id)
    settings, problems = rules_in_force(session, store_id)
    hook = session.execute(
        select(StoreConfig.webhook_url, StoreConfig.webhook_secret).where(
            StoreConfig.store_id == store_id
        )
    ).first()
    set_rules = settings.model_fields_set
    views = [
        RuleView(
            name,
            rules.DESCRIPTIONS.get(name, ""),
            getattr(settings, name).model_dump(mode="json"),
            rules.DEFAULT_RULES[name],
            name in set_rules,
        )
        for name in rules.RuleSettings.model_fields
    ]
    url = hook.webhook_url if hook is not None else None
    has_secret = bool(hook is not None and hook.webhook_secret)
    analytics = session.get(StoreAnalytics, store_id)
    return EffectiveConfig(
        store_id,
        views,
        url,
        has_secret,
        problems,
        zones=dict(analytics.zones) if analytics is not None else {},  # type: ignore[arg-type]
        demographics_enabled=bool(analytics and analytics.demographics_enabled),
        sentiment_enabled=bool(analytics and analytics.sentiment_enabled),
    )


def write(session: Session, store_id: str, **values: object) -> None:
    """Set columns of the store's config row, creating it if needed. An UPDATE, not a
    load: a row with unreadable rules can still be repaired."""
    changed = session.execute(
        update(StoreConfig).where(StoreConfig.store_id == store_id).values(**values)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        session.add(StoreConfig(store_id=store_id, **{"rules": {}, **values}))
        session.flush()


def set_rules(
    session: Session,
    principal: Principal,
    store_id: str,
    values: Mapping[str, Any],
    *,
    only_changes: bool = False,
) -> EffectiveConfig:
    """Replace the store's rule overrides; the webhook stays as it is.

    Validated like `PUT /stores/{id}/config` (`rules.checked`: an `InvalidError` naming
    the setting, nothing written). `only_changes` stores only what differs from the
    defaults (the console's form sends every value), so a store keeps following a
    default it never changed.
    """
    _require(principal, store_id)
    accounts.get_store(session, store_id)
    settings = rules.checked(values)
    if only_changes:
        overrides = settings.model_dump(mode="json", exclude_defaults=True)
    else:
        overrides = settings.model_dump(mode="json", exclude_unset=True)
    write(session, store_id, rules=overrides)
    audit.record(session, principal, "store_config", None, store_id, changed="rules")
    return effective(session, principal, store_id)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def set_webhook(
    session: Session, principal: Principal, store_id: str, url: str, policy: webhooks.Policy
) -> str | None:
    """Point the store's webhook at `url` with a new secret, returned once (never shown
    again); an empty `url` removes the webhook (None). A URL the server must not call is
    refused (`webhooks.WebhookRefused`, with its reason) and nothing changes."""
    _require(principal, store_id)
    accounts.get_store(session, store_id)
    url = url.strip()
    if not url:
        write(session, store_id, webhook_url=None, webhook_secret=None)
        audit.record(session, principal, "store_config", None, store_id, changed="webhook")
        return None
    webhooks.check_url(url, policy)
    secret = new_secret()
    write(session, store_id, webhook_url=url, webhook_secret=secret)
    audit.record(session, principal, "store_config", None, store_id, changed="webhook")
    return secret


def rotate_secret(session: Session, principal: Principal, store_id: str) -> str:
    """A new webhook secret (returned once); the old one stops signing at once."""
    _require(principal, store_id)
    accounts.get_store(session, store_id)
    url = session.scalar(select(StoreConfig.webhook_url).where(StoreConfig.store_id == store_id))
    if not url:
        raise ConflictError("the store has no webhook: set its URL first", reason="no_webhook")
    secret = new_secret()
    write(session, store_id, webhook_secret=secret)
    audit.record(session, principal, "store_config", None, store_id, changed="webhook_secret")
    return secret


def send_test(
    session: Session,
    principal: Principal,
    store_id: str,
    sessions: sessionmaker[Session],
    policy: webhooks.Policy,
) -> str:
    """Send a test event (no customer in it) to the store's webhook in the background;
    its attempts appear in the delivery log under the returned event id."""
    _require(principal, store_id)
    accounts.get_store(session, store_id)
    hook = session.execute(
        select(StoreConfig.webhook_url, StoreConfig.webhook_secret).where(
            StoreConfig.store_id == store_id
        )
    ).first()
    if hook is None or not hook.webhook_url or not hook.webhook_secret:
        raise ConflictError("the store has no webhook: set its URL first", reason="no_webhook")
    event_id = f"test:{new_id()[:12]}"
    audit.record(session, principal, "webhook_test", None, store_id, event=event_id)
    payload: dict[str, object] = {
        "type": "test",
        "id": event_id,
        "store_id": store_id,
        "created_at": utcnow().isoformat(),
    }
    report = recorder(sessions, store_id, event_id)
    webhooks.deliver(hook.webhook_url, hook.webhook_secret, payload, policy, report=report)
    return event_id


def deliveries(
    session: Session, principal: Principal, store_id: str, limit: int = 50
) -> list[WebhookDelivery]:
    """The store's latest delivery attempts, newest first."""
    _require(principal, store_id)
    accounts.get_store(session, store_id)
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.store_id == store_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(max(1, min(limit, 500)))
    )
    return list(session.scalars(query))


def recorder(sessions: sessionmaker[Session], store_id: str, event_id: str) -> webhooks.Report:
    """A `webhooks.Report` writing each attempt to the delivery log (own transaction;
    a failure to log never stops the delivery)."""

    def report(attempt: int, status: int | None, error: str) -> None:
        at = utcnow()
        try:
            with db.transaction(sessions) as session:
                session.execute(
                    delete(WebhookDelivery).where(
                        WebhookDelivery.store_id == store_id,
                        WebhookDelivery.at < at - timedelta(days=DELIVERY_LOG_DAYS),
                    )
                )
                session.add(
                    WebhookDelivery(
                        store_id=store_id,
                        event_id=event_id[:64],
                        attempt=attempt,
                        status_code=status,
                        ok=status is not None and 200 <= status < 300,
                        error=error[:ERROR_CHARS],
                        at=at,
                    )
                )
        except Exception as exc:  # the log is best effort; the delivery goes on
            log.warning("webhook delivery not logged: %s", type(exc).__name__)

    return report


# --------------------------------------------------------------------------------------
# Anonymous analytics (issue 13): zones per camera and the demographics/sentiment switches.


def _analytics_row(session: Session, store_id: str) -> StoreAnalytics:
    row = session.get(StoreAnalytics, store_id, with_for_update=True)
    if row is None:
        row = StoreAnalytics(
            store_id=store_id, zones={}, demographics_enabled=False, sentiment_enabled=False
        )
        session.add(row)
    return row


def require_camera(session: Session, store_id: str, camera: str) -> None:
    """422 `unknown_camera` unless the store's agent has reported `camera` (its masked name)."""
    printable = camera.isprintable()  # a NUL is refused by PostgreSQL before any lookup
    known = printable and session.scalar(
        select(CameraHealth.camera)
        .where(CameraHealth.store_id == store_id, CameraHealth.camera == camera)
        .limit(1)
    )
    if not known:
        raise InvalidError(
            f"camera {camera[:100]!r} has not been reported by this store's agent",
            reason="unknown_camera",
        )


def set_zones(
    session: Session,
    principal: Principal,
    store_id: str,
    camera: str,
    raw_zones: Sequence[Mapping[str, Any]],
) -> EffectiveConfig:
    """Replace one camera's zones (an empty list removes them).

    The camera must be one the store's agent has reported (its masked name, as in the
    camera-health list), and every zone must pass `zones.checked`; otherwise an
    `InvalidError` (422) with the reason, and nothing is written.
    """
    _require(principal, store_id)
    accounts.get_store(session, store_id)
    require_camera(session, store_id, camera)
    checked = [z.as_json() for z in zones.checked(raw_zones)]
    row = _analytics_row(session, store_id)
    current = dict(row.zones or {})
    if checked:
        current[camera] = checked
    else:
        current.pop(camera, None)
    row.zones = current  # a new dict: the JSON column sees the change
    session.flush()
    audit.record(
        session, principal, "store_config", None, store_id, changed="zones", camera=camera[:100]
    )
    return effective(session, principal, store_id)


def set_analytics(
    session: Session,
    principal: Principal,
    store_id: str,
    *,
    demographics_enabled: bool,
    sentiment_enabled: bool,
) -> EffectiveConfig:
    """Turn the store's demographics (age band x gender) and sentiment counters on or off."""
    _require(principal, store_id)
    accounts.get_store(session, store_id)
    row = _analytics_row(session, store_id)
    row.demographics_enabled = demographics_enabled
    row.sentiment_enabled = sentiment_enabled
    session.flush()
    audit.record(
        session,
        principal,
        "store_config",
        None,
        store_id,
        changed="analytics",
        demographics=demographics_enabled,
        sentiment=sentiment_enabled,
    )
    return effective(session, principal, store_id)
