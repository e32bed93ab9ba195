"""Enrollment options of the chain and of each store: language, fields, minimum age, kiosk.

The chain's row (scope `*`) holds the defaults; a store's row overrides any of them (a
NULL field inherits). `effective` is what the enrollment pages and `enroll` apply:

* `language`: the consent text shown first (a customer may switch to another translation);
* `ask_phone`, `ask_tier`: whether the enrollment form asks for a phone number and a tier;
* `min_age`: when above 0, the customer must tick "I am at least N years old" and an
  enrollment without it is refused (`age_not_confirmed`);
* `kiosk_idle_seconds`: a kiosk screen left untouched this long is cleared back to welcome.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy.orm import Session

from facecrm.crm import accounts, audit, consent_text
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import Forbidden, InvalidError
from facecrm.crm.models import EnrollmentSettings, utcnow

CHAIN = "*"
MAX_AGE = 21  # the highest age of majority or consent among the chain's likely markets
IDLE_BOUNDS = (2, 3600)


@dataclass(frozen=True, slots=True)
class Options:
    """The enrollment options in force for a store (or the chain's)."""

    language: str = "en"
    ask_phone: bool = False
    ask_tier: bool = False
    min_age: int = 0
    kiosk_idle_seconds: int = 60


NAMES = tuple(f.name for f in fields(Options))


def effective(session: Session, store_id: str | None) -> Options:
    """The chain's options overridden by the store's (no permission: every page reads them)."""
    values: dict[str, object] = {}
    for scope in (CHAIN, store_id):
        row = session.get(EnrollmentSettings, scope) if scope else None
        if row is not None:
            values.update({k: getattr(row, k) for k in NAMES if getattr(row, k) is not None})
    return Options(**values)  # type: ignore[arg-type]


def overrides(session: Session, principal: Principal, scope: str) -> dict[str, object]:
    """The values set at `scope` itself (None: inherited)."""
    principal.require(Permission.ENROLLMENT_CONFIG)
    _check_scope(session, principal, scope)
    row = session.get(EnrollmentSettings, scope)
    return {k: (getattr(row, k) if row is not None else None) for k in NAMES}


def _check_scope(session: Session, principal: Principal, scope: str) -> None:
    if scope == CHAIN:
        if principal.stores is not None:
            raise Forbidden("only a chain-wide administrator sets the chain's options")
        return
    principal.require_store(scope)
    accounts.get_store(session, scope)


def _validate(values: dict[str, object]) -> dict[str, object]:
    unknown = set(values) - set(NAMES)
    if unknown:
        raise InvalidError(f"unknown enrollment options: {', '.join(sorted(unknown))}")
    checked: dict[str, object] = {}
    for name, value in values.items():
        if value is None:
            checked[name] = None
        elif name == "language":
            checked[name] = consent_text.check_language(str(value))
        elif name in {"ask_phone", "ask_tier"}:
            if not isinstance(value, bool):
                raise InvalidError(f"{name} is true or false")
            checked[name] = value
        else:
            low, high = (0, MAX_AGE) if name == "min_age" else IDLE_BOUNDS
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidError(f"{name} is a whole number from {low} to {high}")
            checked[name] = value
    return checked


def configure(
    session: Session, principal: Principal, scope: str, values: dict[str, object]
) -> Options:
    """Set (or with None, clear) options at `scope`: `*` (admins) or a store of the
    principal's. Returns the options now in force there; audited (`enrollment_config`)."""
    principal.require(Permission.ENROLLMENT_CONFIG)
    _check_scope(session, principal, scope)
    checked = _validate(values)
    row = session.get(EnrollmentSettings, scope)
    if row is None:
        row = EnrollmentSettings(scope=scope)
        session.add(row)
    for name, value in checked.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    session.flush()
    store = None if scope == CHAIN else scope
    audit.record(session, principal, "enrollment_config", None, store, changed=sorted(checked))
    return effective(session, store)
