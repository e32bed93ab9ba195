"""Who may do what: one permission table for the API, the console and the services.

Customers are chain-wide (one gallery, recognised in every store), so their
profile is readable by all store staff. Everything that happens *in* a store
(identification requests, visits, purchases, interests, feedback, devices) is
scoped: managers and associates act only in their own stores, a device only in
its store. Erasure is for managers and admins. The data-subject export
(GDPR art. 15) is by nature complete and chain-wide -- it holds every store's
visits and purchases -- so it needs a chain-wide role: admins only. Attaching a
photo that does not match a customer's existing face (a new look the model
misses) needs a manager's override. The auditor reads the audit trail and
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from facecrm.crm.models import DeviceKind, Role
from facecrm.errors import Forbidden  # re-exported: the old import path


class Permission(StrEnum):
    STORES_READ = "stores:read"
    STORES_WRITE = "stores:write"
    STAFF_WRITE = "staff:write"
    STAFF_MANAGE = "staff:manage"  # associates of one's own stores (rules: crm.accounts)
    DEVICES_MANAGE = "devices:manage"
    CUSTOMERS_READ = "customers:read"
    CUSTOMERS_WRITE = "customers:write"
    CUSTOMERS_EXPORT = "customers:export"
    CUSTOMERS_IMPORT = "customers:import"  # bulk create/update from a CRM file: admins only
    CUSTOMERS_ERASE = "customers:erase"
    FACES_OVERRIDE = "faces:override"  # add a face that fails the 1:1 check (audited)
    IDENTIFY = "identify"
    ACTIVITY_READ = "activity:read"
    VISITS_WRITE = "visits:write"
    PURCHASES_WRITE = "purchases:write"
    ACTIVITY_WRITE = "activity:write"  # interests and feedback
    AUDIT_READ = "audit:read"
    ALERTS = "alerts"  # see, claim and acknowledge alerts; start and end shifts
    AGENT = "agent"  # sync the gallery and deliver visit events (store agents)
    DISPUTES_READ = "disputes:read"  # a store's report of disputed matches (recalibration)
    LOYALTY_LOOKUP = "loyalty:lookup"  # a till's exact look-up by loyalty id: POS devices only
    CONSENT_TEXTS_READ = "consent_texts:read"
    CONSENT_TEXTS_WRITE = "consent_texts:write"  # a new version of a text: admins only
    ENROLLMENT_CONFIG = "enrollment:config"  # a store's enrollment options (chain's: admins)
    KEYS_ROTATE = "keys:rotate"  # re-wrap every data key under a new master key: admins
    OTP_OUTBOX_READ = "otp_outbox:read"  # codes waiting for the embedded sender: admins
    ANALYTICS_READ = "analytics:read"  # anonymous footfall/queue dashboard (crm.dashboard)
    PAYMENTS_ENROLL = "payments:enroll"  # set a customer up for face payment (crm.payments)
    PAY = "pay"  # open and follow face-payment sessions at a till: POS devices only


P = Permission
SELF_SERVICE = "self_service"  # the role of a customer acting on their own data
_STAFF = {
    P.STORES_READ,
    P.CUSTOMERS_READ,
    P.CUSTOMERS_WRITE,
    P.IDENTIFY,
    P.ACTIVITY_READ,
    P.VISITS_WRITE,
    P.PURCHASES_WRITE,
    P.ACTIVITY_WRITE,
    P.ALERTS,
    P.CONSENT_TEXTS_READ,
}

GRANTS: dict[str, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission) - {P.LOYALTY_LOOKUP, P.PAY},
    Role.MANAGER: frozenset(
        _STAFF
        | {
            P.DEVICES_MANAGE,
            P.CUSTOMERS_ERASE,
            P.FACES_OVERRIDE,
            P.ENROLLMENT_CONFIG,
            P.DISPUTES_READ,
            P.STAFF_MANAGE,
            P.ANALYTICS_READ,
            P.PAYMENTS_ENROLL,
        }
    ),
    Role.ASSOCIATE: frozenset(_STAFF | {P.PAYMENTS_ENROLL}),
    Role.AUDITOR: frozenset({P.STORES_READ, P.AUDIT_READ, P.CONSENT_TEXTS_READ}),
    DeviceKind.AGENT: frozenset({P.IDENTIFY, P.VISITS_WRITE, P.AGENT}),
    DeviceKind.POS: frozenset(
        {P.IDENTIFY, P.VISITS_WRITE, P.PURCHASES_WRITE, P.LOYALTY_LOOKUP, P.PAY}
    ),
    # enrolls customers at the console's kiosk page, nothing else (its key opens no API)
    DeviceKind.KIOSK: frozenset({P.CUSTOMERS_WRITE, P.CONSENT_TEXTS_READ}),
    # a customer on their own phone (crm.selfservice): never built from a request's word,
    # only by selfservice for the one customer a verified code or personal session names
    SELF_SERVICE: frozenset(
        {P.CUSTOMERS_WRITE, P.CUSTOMERS_EXPORT, P.CUSTOMERS_ERASE, P.PAYMENTS_ENROLL}
    ),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated staff user or device.

    `stores` is None for principals that act chain-wide (admins, auditors);
    otherwise the stores they may act in.
    """

    kind: str  # "staff", "device" or "system"
    id: str
    name: str
    role: str
    stores: frozenset[str] | None

    @property
    def label(self) -> str:
        """How the audit trail names this principal."""
        return f"{self.kind}:{self.name}"

    def can(self, permission: Permission) -> bool:
        return permission in GRANTS.get(self.role, frozenset())

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise Forbidden(f"{self.role} may not {permission.value}")

    def may_act_in(self, store_id: str | None) -> bool:
        return self.stores is None or (store_id is not None and store_id in self.stores)

    def require_store(self, store_id: str | None) -> None:
        if not self.may_act_in(store_id):
            raise Forbidden("this store is not one of yours")

    def visible_stores(self) -> frozenset[str] | None:
        """Stores whose activity this principal may see (None: all)."""
        return self.stores


SYSTEM = Principal("system", "system", "cli", Role.ADMIN, None)
"""The operator at the command line: acts as an administrator."""
