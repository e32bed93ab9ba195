"""Face payment (issue 14): who may pay with their face, and the tills' payment sessions.

A customer may pay at a till when three things hold at that moment (`payable`): an
active `in_store_recognition` consent (without it there is no face to match), an active
`face_payment` consent, and a `PaymentProfile`. Withdrawing `face_payment` deletes the
profile (`forget`, called by `FaceCRM.withdraw`) so payment stops at once and
recognition stays; withdrawing recognition deletes the face, so neither works (the
profile stays under its own, still active consent, and `payable` refuses). Erasure
deletes the profile with the customer (foreign key cascade; `payment_profiles` is one
of `service.CUSTOMER_TABLES`, so the erased row is scrubbed from the files too).

Who may set a customer up for payment (`Permission.PAYMENTS_ENROLL`): the customer
themself (self-service, their own record only), or store staff *with the customer at
the counter* -- the request must say so (`customer_present`), the audit event records
it, and the store is the associate's. Devices other than a kiosk may not; `SYSTEM`
(CLI, tests) may. What is stored is never a card number: the wallet's opaque token is
refused when it holds a digit run that passes the Luhn check at a card's length
(`looks_like_pan`). The phone's last 4 digits are kept as an HMAC keyed by the server
secret and the customer id (`last4_mac`); `check_last4` compares in constant time. Ten
thousand values are easy to try for whoever holds the server secret: the MAC only keeps
a copy of the database alone from revealing them.

Payment sessions (`open_session`, `get_session`): created by a store's POS device,
`looking` for a face, expiring `SESSION_SECONDS` after creation. The state machine
(`TRANSITIONS`, `DeclineReason`) is designed here; frames, the smile challenge, step-up
and authorisation come next (see the notes), so today a session can only expire.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from facecrm.config import Settings
from facecrm.crm import audit, customers
from facecrm.crm.authz import SELF_SERVICE, Permission, Principal
from facecrm.crm.errors import (
    ConflictError,
    ConsentError,
    Forbidden,
    InvalidError,
    NotFoundError,
)
from facecrm.crm.models import (
    Customer,
    DeviceKind,
    PaymentProfile,
    PaySession,
    Purpose,
    utcnow,
)
from facecrm.keys import derived_key

KEY_PURPOSE = "payment-phone-last4"  # `keys.derived_key` purpose of the last-4 MAC
SESSION_SECONDS = 60
MAX_AMOUNT = 100_000_000  # minor units: a sanity cap far above any till's sale
MAX_TILL = 40
MAX_IDEMPOTENCY_KEY = 100
TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+/=-]{7,199}\Z")
PROVIDER = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}\Z")
PRINTABLE = re.compile(r"^[\x21-\x7e]+\Z")
LAST4 = re.compile(r"^[0-9]{4}\Z")
_DIGIT_RUN = re.compile(r"[0-9](?:[ -]?[0-9])+")
PAN_LENGTHS = range(12, 20)  # ISO/IEC 7812: 8 to 19; 12+ keeps short references usable

# ISO 4217 codes accepted, with their minor-unit exponent (limits and amounts are minor
# units, so the exponent tells a till 1000 JPY from 10.00 EUR)
CURRENCIES: dict[str, int] = {
    "AED": 2, "AUD": 2, "BRL": 2, "CAD": 2, "CHF": 2, "CNY": 2, "CZK": 2, "DKK": 2,
    "EUR": 2, "GBP": 2, "HKD": 2, "HUF": 2, "INR": 2, "JPY": 0, "KRW": 0, "MXN": 2,
    "NOK": 2, "NZD": 2, "PLN": 2, "SEK": 2, "SGD": 2, "USD": 2, "ZAR": 2,
}  # fmt: skip


class CardNumberRefused(InvalidError):
    """A payment token that looks like a card number: we never hold one (422)."""

    reason = "card_number_refused"


class IdempotencyKeyReused(ConflictError):
    """An idempotency key already used for a different request (409)."""

    reason = "idempotency_key_reused"


class PaymentConsentError(ConsentError):
    """Payment set-up needs both the recognition and the payment consent (409)."""

    reason = "payment_consent_required"


class SessionState(StrEnum):
    LOOKING = "looking"  # frames wanted: is an enrolled-for-payment customer there?
    CHALLENGE = "challenge"  # "smile now" shown at a random moment: liveness and intent
    STEP_UP = "step_up"  # the last 4 phone digits asked
    AUTHORISED = "authorised"  # a signed authorisation issued (once per session)
    DECLINED = "declined"  # with a `DeclineReason`; the till falls back to card or PIN


class DeclineReason(StrEnum):
    NO_FACE = "no_face"
    NOT_ENROLLED_FOR_PAYMENT = "not_enrolled_for_payment"
    LIVENESS_FAILED = "liveness_failed"
    NO_SMILE = "no_smile"
    STEP_UP_FAILED = "step_up_failed"
    LIMIT_EXCEEDED = "limit_exceeded"
    AMBIGUOUS_MATCH = "ambiguous_match"
    EXPIRED = "expired"
    CANCELLED = "cancelled"  # "pay another way" (crm.payflow.cancel)


S = SessionState
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    S.LOOKING: frozenset({S.CHALLENGE, S.DECLINED}),
    S.CHALLENGE: frozenset({S.STEP_UP, S.AUTHORISED, S.DECLINED}),
    S.STEP_UP: frozenset({S.AUTHORISED, S.DECLINED}),
    S.AUTHORISED: frozenset(),  # final: one authorisation per session
    S.DECLINED: frozenset(),  # final: a new attempt is a new session
}
"""Where a session may go from each state; every non-final state may be declined
(`expired` among the reasons), and nothing leaves a final state."""


def advance(row: PaySession, to: SessionState, reason: DeclineReason | None = None) -> PaySession:
    """Move `row` to `to` if `TRANSITIONS` allows it (a decline needs its reason)."""
    current = SessionState(row.state)
    if to not in TRANSITIONS[current]:
        raise ConflictError(f"a {current} session cannot become {to}", reason="bad_transition")
    if (to == S.DECLINED) != (reason is not None):
        raise ValueError("a decline, and only a decline, has a reason")
    row.state = to.value
    row.decline_reason = reason.value if reason is not None else None
    return row


# -- what is stored ------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def looks_like_pan(text: str) -> bool:
    """Whether `text` holds a card number: a run of digits (spaces or single dashes
    allowed between them) of a card's length that passes the Luhn check. Whole runs
    only: every window of a long digit string would pass by chance one time in ten."""
    for run in _DIGIT_RUN.findall(text):
        digits = re.sub(r"[ -]", "", run)
        if len(digits) in PAN_LENGTHS and luhn_ok(digits):
            return True
    return False


def check_token(token: str) -> str:
    if looks_like_pan(token):
        raise CardNumberRefused(
            "this looks like a card number: send the wallet provider's token instead"
        )
    if not TOKEN.match(token):
        raise InvalidError(
            "a payment token is the provider's opaque reference (8 to 200 characters: "
            "letters, digits and _ . : + / = -)",
            reason="bad_payment_token",
        )
    return token


def check_currency(currency: str) -> str:
    if currency not in CURRENCIES:
        raise InvalidError(
            f"unknown currency {currency[:8]!r}: an ISO 4217 code like EUR",
            reason="bad_currency",
        )
    return currency


def check_amount(amount: int, what: str = "an amount") -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise InvalidError(
            f"{what} is a whole number of minor units, 1 to {MAX_AMOUNT}", reason="bad_amount"
        )
    return amount


def last4_mac(settings: Settings, customer_id: str, digits: str) -> str:
    """The stored form of the last 4 phone digits: HMAC-SHA256 under a key derived from
    the server secret, over the customer id and the digits (equal digits of two
    customers give different MACs)."""
    key = derived_key(settings, KEY_PURPOSE)
    return hmac.new(key, f"{customer_id}:{digits}".encode(), hashlib.sha256).hexdigest()


def check_last4(settings: Settings, profile: PaymentProfile, digits: str) -> bool:
    """Whether `digits` are the customer's last 4 (constant-time comparison)."""
    candidate = last4_mac(settings, profile.customer_id, digits if LAST4.match(digits) else "")
    return hmac.compare_digest(candidate, profile.phone_last4_mac)


# -- enrollment ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentSetup:
    """What a customer sets up for face payment (limits in `currency`'s minor units).

    In an update, None keeps the stored value.
    """

    token: str | None = None
    provider: str | None = None
    phone_last4: str | None = None
    currency: str | None = None
    limit_per_transaction: int | None = None
    limit_per_day: int | None = None


def _authorise(
    session: Session, principal: Principal, customer_id: str, customer_present: bool
) -> str | None:
    """Who may change a customer's payment set-up (module docstring); the store."""
    principal.require(Permission.PAYMENTS_ENROLL)
    if principal.role == SELF_SERVICE:
        if principal.id != customer_id:
            raise Forbidden("a customer may set up payment for themself only")
    elif principal.kind == "staff" and not customer_present:
        raise InvalidError(
            "payment is set up with the customer present: confirm it (customer_present)",
            reason="customer_not_present",
        )
    return customers.place(session, principal, None, required=False)


def consented(customer: Customer) -> bool:
    """Both consents face payment needs are active now."""
    both = (Purpose.IN_STORE_RECOGNITION, Purpose.FACE_PAYMENT)
    return all(customer.active_consent(p) is not None for p in both)


def payable(customer: Customer, profile: PaymentProfile | None) -> DeclineReason | None:
    """None when the customer may pay with their face now, else why not (the decision
    rules of the next round add the match, liveness, step-up and limits)."""
    if profile is None or not consented(customer):
        return DeclineReason.NOT_ENROLLED_FOR_PAYMENT
    return None


def _limits(currency: str, per_transaction: int, per_day: int) -> None:
    check_currency(currency)
    check_amount(per_transaction, "a per-transaction limit")
    check_amount(per_day, "a daily limit")
    if per_transaction > per_day:
        raise InvalidError(
            "the per-transaction limit cannot exceed the daily limit", reason="bad_limits"
        )


def get_profile(session: Session, principal: Principal, customer_id: str) -> PaymentProfile:
    """A customer's payment profile (not audited: the customer read is; no secret in it)."""
    principal.require(Permission.CUSTOMERS_READ)
    customers.load(session, customer_id)
    profile = session.get(PaymentProfile, customer_id)
    if profile is None:
        raise NotFoundError("this customer is not set up for face payment")
    return profile


def enroll(
    session: Session,
    settings: Settings,
    principal: Principal,
    customer_id: str,
    setup: PaymentSetup,
    *,
    customer_present: bool = False,
) -> PaymentProfile:
    """Set a customer up for face payment (every field needed); audited `payment_enroll`.

    Needs both consents active now (`payment_consent_required`); an existing profile is
    a conflict (update it instead).
    """
    store_id = _authorise(session, principal, customer_id, customer_present)
    customer = customers.load(session, customer_id)
    if not consented(customer):
        raise PaymentConsentError(
            "face payment needs active in_store_recognition and face_payment consents"
        )
    if session.get(PaymentProfile, customer_id) is not None:
        raise ConflictError("this customer is already set up for face payment")
    if None in (setup.token, setup.provider, setup.phone_last4, setup.currency):
        raise InvalidError("a payment set-up needs token, provider, phone_last4 and currency")
    profile = PaymentProfile(customer_id=customer_id)
    _apply(settings, profile, setup, fresh=True)
    session.add(profile)
    session.flush()
    audit.record(
        session,
        principal,
        "payment_enroll",
        customer_id,
        store_id,
        customer_present=customer_present,
        provider=profile.provider,
    )
    return profile


def update(
    session: Session,
    settings: Settings,
    principal: Principal,
    customer_id: str,
    setup: PaymentSetup,
    *,
    customer_present: bool = False,
) -> PaymentProfile:
    """Change the fields given (limits, token, digits); audited `payment_update` with
    the names of the fields changed (never their values)."""
    store_id = _authorise(session, principal, customer_id, customer_present)
    customers.load(session, customer_id)
    profile = session.get(PaymentProfile, customer_id)
    if profile is None:
        raise NotFoundError("this customer is not set up for face payment")
    changed = _apply(settings, profile, setup, fresh=False)
    session.flush()
    audit.record(
        session,
        principal,
        "payment_update",
        customer_id,
        store_id,
        customer_present=customer_present,
        fields=changed,
    )
    return profile


def _apply(
    settings: Settings, profile: PaymentProfile, setup: PaymentSetup, *, fresh: bool
) -> list[str]:
    """Validate everything, then write (nothing is written when a field is refused)."""
    if setup.token is not None:
        check_token(setup.token)
    if setup.provider is not None and not PROVIDER.match(setup.provider):
        raise InvalidError(
            "a provider is a short lower-case name like 'alipay'", reason="bad_provider"
        )
    if setup.phone_last4 is not None and not LAST4.match(setup.phone_last4):
        raise InvalidError("the last 4 digits of the phone: exactly 4 digits", reason="bad_last4")
    currency = setup.currency if setup.currency is not None else profile.currency
    per_tx = setup.limit_per_transaction
    per_day = setup.limit_per_day
    if fresh and (per_tx is None or per_day is None):
        raise InvalidError("a payment set-up needs both limits")
    _limits(
        str(currency),
        per_tx if per_tx is not None else profile.limit_per_transaction,
        per_day if per_day is not None else profile.limit_per_day,
    )
    changed = [
        name
        for name in (
            "token",
            "provider",
            "phone_last4",
            "currency",
            "limit_per_transaction",
            "limit_per_day",
        )
        if getattr(setup, name) is not None
    ]
    if setup.token is not None:
        profile.token = setup.token
    if setup.provider is not None:
        profile.provider = setup.provider
    if setup.phone_last4 is not None:
        profile.phone_last4_mac = last4_mac(settings, profile.customer_id, setup.phone_last4)
    profile.currency = str(currency)
    if per_tx is not None:
        profile.limit_per_transaction = per_tx
    if per_day is not None:
        profile.limit_per_day = per_day
    return changed


def remove(session: Session, principal: Principal, customer_id: str) -> None:
    """Delete a customer's payment set-up (the consent stays as given); audited
    `payment_remove`. Staff need not have the customer present: stopping is never blocked."""
    store_id = _authorise(session, principal, customer_id, customer_present=True)
    customers.load(session, customer_id)
    if not forget(session, customer_id):
        raise NotFoundError("this customer is not set up for face payment")
    audit.record(session, principal, "payment_remove", customer_id, store_id)


def forget(session: Session, customer_id: str) -> bool:
    """Delete the payment profile, if any (consent withdrawal; the caller audits)."""
    profile = session.get(PaymentProfile, customer_id)
    if profile is None:
        return False
    session.delete(profile)
    session.flush()
    return True


# -- payment sessions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """A till's request for a payment session (amount in `currency`'s minor units)."""

    amount: int
    currency: str
    till: str
    idempotency_key: str | None = None


def _till_store(principal: Principal) -> str:
    """The store of the POS device making the request (payment is for tills only)."""
    principal.require(Permission.PAY)
    if principal.kind != "device" or principal.role != DeviceKind.POS or not principal.stores:
        raise Forbidden("only a store's POS device may take face payments")
    (store_id,) = principal.stores
    return store_id


def _request_mac(request: SessionRequest) -> str:
    what = f"{request.amount}|{request.currency}|{request.till}"
    return hashlib.sha256(what.encode()).hexdigest()


def open_session(
    session: Session, principal: Principal, request: SessionRequest, now: datetime | None = None
) -> tuple[PaySession, bool]:
    """A new payment session `looking` for a face, or -- for a retry with the same
    idempotency key and request -- the one already made; the flag says which (a key
    reused for another request is `idempotency_key_reused`). Audited
    `pay_session_create` once, when made.
    """
    store_id = _till_store(principal)
    check_amount(request.amount)
    check_currency(request.currency)
    if not 0 < len(request.till) <= MAX_TILL or not PRINTABLE.match(request.till):
        raise InvalidError(f"a till is named by 1 to {MAX_TILL} printable characters")
    key = request.idempotency_key
    if key is not None and (not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not PRINTABLE.match(key)):
        raise InvalidError(
            f"an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
            reason="bad_idempotency_key",
        )
    mac = _request_mac(request)
    if key is not None:
        earlier = _by_key(session, principal.id, key)
        if earlier is not None:
            return _replay(session, principal, earlier, mac, now), False
    now = now or utcnow()
    row = PaySession(
        store_id=store_id,
        device_id=principal.id,
        till=request.till,
        amount=request.amount,
        currency=request.currency,
        state=S.LOOKING.value,
        idempotency_key=key,
        request_mac=mac,
        created_at=now,
        expires_at=now + timedelta(seconds=SESSION_SECONDS),
    )
    try:
        with session.begin_nested():  # two retries racing: the second reads the first's
            session.add(row)
    except IntegrityError:
        earlier = _by_key(session, principal.id, key) if key is not None else None
        if earlier is None:
            raise
        return _replay(session, principal, earlier, mac, now), False
    audit.record(
        session,
        principal,
        "pay_session_create",
        None,
        store_id,
        session_id=row.id,
        amount=row.amount,
        currency=row.currency,
        till=row.till,
    )
    return row, True


def _by_key(session: Session, device_id: str, key: str) -> PaySession | None:
    return session.scalar(
        select(PaySession).where(
            PaySession.device_id == device_id, PaySession.idempotency_key == key
        )
    )


def _replay(
    session: Session, principal: Principal, row: PaySession, mac: str, now: datetime | None
) -> PaySession:
    """The session a retry asked for again (as it is now: possibly expired)."""
    if not hmac.compare_digest(row.request_mac, mac):
        raise IdempotencyKeyReused(
            "this idempotency key was used for another payment: use a new key"
        )
    expire(session, principal, row, now)
    return row


def get_session(
    session: Session, principal: Principal, session_id: str, now: datetime | None = None
) -> PaySession:
    """A payment session opened by this very device: another store's, or another till's
    of the same store, is not found (a till must not drive a neighbour's session nor read
    its authorisation, which names the customer's wallet token). A session past its
    expiry is declined `expired` as it is read (audited `pay_session_expired`)."""
    store_id = _till_store(principal)
    row = session.get(PaySession, session_id) if len(session_id) <= 32 else None
    if row is None or row.store_id != store_id or row.device_id != principal.id:
        raise NotFoundError("no such payment session")
    expire(session, principal, row, now)
    return row


def expire(
    session: Session, principal: Principal, row: PaySession, now: datetime | None = None
) -> bool:
    """Decline a session whose time is up (whatever state it is in, unless final)."""
    final = not TRANSITIONS[SessionState(row.state)]
    if final or (now or utcnow()) < row.expires_at:
        return False
    advance(row, S.DECLINED, DeclineReason.EXPIRED)
    session.flush()
    audit.record(session, principal, "pay_session_expired", None, row.store_id, session_id=row.id)
    return True


def erase_sessions(session: Session, customer_id: str) -> None:
    """A customer's payment sessions go with them on erasure (their signed authorisation
    names the wallet token; the foreign key alone would only unlink them)."""
    session.execute(delete(PaySession).where(PaySession.customer_id == customer_id))


def drop_stale_authorisations(session: Session, settings: Settings, now: datetime) -> None:
    """Forget signed authorisations past their confirmation deadline (charge deadline
    plus grace): nothing may be charged or confirmed with them any more, and each names
    a customer's wallet token. The session row stays until `purge_sessions`."""
    seconds = settings.pay_authorisation_seconds + settings.pay_confirm_grace_seconds
    session.execute(
        sql_update(PaySession)
        .where(
            PaySession.authorisation.is_not(None),
            PaySession.authorised_at < now - timedelta(seconds=seconds),
        )
        .values(authorisation=None)
        .execution_options(synchronize_session=False)
    )


def purge_sessions(session: Session, days: int, now: datetime) -> int:
    """Delete payment sessions that expired more than `days` ago (retention; a session
    is final by then). The purchases they confirmed stay with the customer."""
    cutoff = now - timedelta(days=days)
    result = session.execute(delete(PaySession).where(PaySession.expires_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
