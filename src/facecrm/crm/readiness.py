"""A store's set-up check: recognition is lawful there only once its basics are in place.

Three items, each confirmed by an administrator for the store (docs/privacy.md):

* `signage`: the entrance sign (docs/signage.md, version `SIGNAGE_VERSION`) is up at
  every entrance a camera covers, before the cameras are switched on;
* `consent_text`: the consent text customers of this store are shown (its version);
* `retention`: the retention settings in force (their values).

A confirmation records *what* was confirmed: when the sign's template, the store's
consent text or a retention setting changes, the item is unconfirmed again. A store
with an unconfirmed item is "not ready": the console shows a banner and
the API's `GET stores/{id}/readiness` says why. With `require_store_readiness` on, a
not-ready store also gets no identification and an empty agent gallery (`require`);
off by default, so that a demo or a test store works without the paperwork.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from facecrm.config import Settings
from facecrm.crm import accounts, audit, consent_text, enrollment
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError
from facecrm.crm.models import Purpose, StoreReadiness

SIGNAGE_VERSION = "2026-12-v1"  # docs/signage.md: bump when the sign's wording changes
ITEMS: dict[str, str] = {
    "signage": "The entrance sign (docs/signage.md) is displayed at every entrance a camera covers",
    "consent_text": "The consent text shown to this store's customers has been reviewed",
    "retention": "The retention settings in force have been reviewed",
}


class StoreNotReadyError(ConflictError):
    """Recognition is switched off in a store whose set-up is not confirmed (409)."""

    reason = "store_not_ready"


@dataclass(frozen=True, slots=True)
class ItemStatus:
    item: str
    label: str
    expected: str  # what is in force now
    confirmed: bool  # confirmed, and for what is in force now
    confirmed_value: str | None = None
    confirmed_by: str | None = None
    confirmed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Readiness:
    store_id: str
    ready: bool
    items: list[ItemStatus]


def consent_text_version(session: Session, store_id: str) -> str:
    """The recognition consent text customers of `store_id` are shown today: its version,
    language and row, so publishing a new version makes the store confirm it again."""
    language = enrollment.effective(session, store_id).language
    text = consent_text.active_for(session, Purpose.IN_STORE_RECOGNITION, language)
    if text is None:
        return f"none published in {language}"
    return f"{text.version} ({text.language}, text #{text.id})"


def retention_value(settings: Settings) -> str:
    """The retention settings in force, as one comparable line."""
    return (
        f"visits {settings.retain_visits_days}d; "
        f"templates unseen {settings.retain_templates_unseen_months}mo; "
        f"consent reconfirmed {settings.reconfirm_consent_months}mo; "
        f"alerts {settings.retain_alerts_days}d; "
        f"audit {settings.retain_audit_days}d; "
        f"backups {settings.backup_retention_days}d"
    )


def _expected(session: Session, settings: Settings, store_id: str) -> dict[str, str]:
    return {
        "signage": SIGNAGE_VERSION,
        "consent_text": consent_text_version(session, store_id),
        "retention": retention_value(settings),
    }


def _status(session: Session, settings: Settings, store_id: str) -> Readiness:
    expected = _expected(session, settings, store_id)
    rows = {
        r.item: r
        for r in session.scalars(select(StoreReadiness).where(StoreReadiness.store_id == store_id))
    }
    items = []
    for item, label in ITEMS.items():
        row = rows.get(item)
        items.append(
            ItemStatus(
                item,
                label,
                expected[item],
                row is not None and row.value == expected[item],
                row.value if row else None,
                row.confirmed_by if row else None,
                row.confirmed_at if row else None,
            )
        )
    return Readiness(store_id, all(i.confirmed for i in items), items)


def status(session: Session, principal: Principal, settings: Settings, store_id: str) -> Readiness:
    """Where the store's set-up stands (its staff, admins and auditors may see it)."""
    principal.require(Permission.STORES_READ)
    principal.require_store(store_id)
    accounts.get_store(session, store_id)
    return _status(session, settings, store_id)


def not_ready(session: Session, principal: Principal, settings: Settings) -> list[str]:
    """Codes of the stores `principal` works in that are not ready (for the console banner)."""
    if not principal.can(Permission.STORES_READ):
        return []
    stores = [s for s in accounts.list_stores(session, principal) if principal.may_act_in(s.id)]
    return [s.code for s in stores if not _status(session, settings, s.id).ready]


def banner(sessions: sessionmaker[Session], principal: Principal, settings: Settings) -> list[str]:
    """`not_ready` in a read-only session of its own: the console's page template asks for
    it while rendering, outside any route's request session."""
    with sessions() as session:
        return not_ready(session, principal, settings)


def confirm(
    session: Session, principal: Principal, settings: Settings, store_id: str, item: str
) -> Readiness:
    """An administrator confirms one item for the store, as it is in force now; audited."""
    principal.require(Permission.STORES_WRITE)
    if item not in ITEMS:
        raise InvalidError(f"unknown readiness item; one of {', '.join(ITEMS)}", reason="bad_item")
    accounts.get_store(session, store_id)
    value = _expected(session, settings, store_id)[item]
    session.merge(
        StoreReadiness(
            store_id=store_id,
            item=item,
            value=value,
            confirmed_by=principal.label[:100],
            confirmed_at=datetime.now(UTC),
        )
    )
    session.flush()
    audit.record(session, principal, "readiness_confirm", None, store_id, item=item, value=value)
    return _status(session, settings, store_id)


def allows_recognition(session: Session, settings: Settings, store_id: str | None) -> bool:
    """Whether recognition may run in `store_id` (always, unless the chain requires
    readiness; a chain-wide call with no store is not a store's camera or till)."""
    if not settings.require_store_readiness or store_id is None:
        return True
    return _status(session, settings, store_id).ready


def require(session: Session, settings: Settings, store_id: str | None) -> None:
    """Refuse recognition in a store that is not ready (when the chain requires it)."""
    if not allows_recognition(session, settings, store_id):
        raise StoreNotReadyError(
            "this store's set-up (signage, consent text, retention) is not confirmed by an "
            "administrator; recognition is off here until it is"
        )
