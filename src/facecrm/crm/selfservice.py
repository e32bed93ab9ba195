"""Self-enrollment and the personal page, on the customer's own phone.

A QR code at a store's door opens `/self/<token>`: the token is the store's link
(`SelfServiceLink`), random and rotatable, never the store's id. The customer reads the
consent text in their language, takes a selfie that the kiosk's quality gate checks as
they go, proves an e-mail address or phone is theirs with a one-time code, and is
enrolled. A returning customer proves the same contact again to open a personal page:
what is held, the export, withdrawal of a purpose, erasure.

The rules, and why:

* Nothing about someone who does not finish is kept beyond the code's life (10 minutes):
  the selfie stays in the phone until the last step, which sends it with the code; the
  challenge holds only keyed hashes (of the destination and the code); the embedded
  sender's outbox row (the one place a destination is in clear) goes with its challenge,
  when used, after the last attempt, or at expiry (`purge_expired`, run on every request).
* Codes: 6 digits, HMAC'd under a key derived from the server secret, compared in
  constant time, 5 attempts, then the challenge is gone. Codes are rate-limited per client
  address and per destination in the database counters (`crm.throttle`: every server
  process counts against the same budget).
* Bots: no third-party CAPTCHA. A form nonce signed by the server and sent too soon
  (`self_min_fill_seconds`) or too late is refused; codes cost a real mailbox or phone;
  the selfie must pass the quality gate (one sharp, frontal, large enough face).
* Only a contact proven by a code opens a personal page (`VerifiedContact`); a contact
  staff typed in opens nothing, so a typo cannot show a stranger someone's data. A
  personal session names exactly one customer and a tag of the contact that opened it;
  it ends when the customer is erased. No operation here takes a customer id from the
  request: it comes from the verified code or the session only.
* A sign-in code for a contact that belongs to no one answers like any other (no
  enumeration), and nothing is sent or stored for it.
* Everything is audited by the crm operations themselves (`customer_create`,
  `consent_give`, `enroll_faces`, `customer_export`, `consent_withdraw`, `erase`) and by
  `self_service_link`, `self_code_send`, `self_code_failed`, `self_sign_in`, `self_view`,
  `incentive_grant` here (the actor `customer:self-service`, the customer by id), and
  `otp_outbox_read` by an operator reading the embedded sender's codes.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import jwt
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from facecrm.config import Settings
from facecrm.crm import audit, consent_text, customers, db, enrollment
from facecrm.crm.authz import SELF_SERVICE, Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError, NotFoundError
from facecrm.crm.models import (
    ConsentText,
    Customer,
    CustomerIncentive,
    OtpChallenge,
    OtpOutbox,
    Purchase,
    Purpose,
    SelfServiceLink,
    Store,
    VerifiedContact,
    Visit,
    utcnow,
)
from facecrm.crm.pos import RateLimitedError
from facecrm.crm.throttle import Counters, RateLimiter
from facecrm.errors import ConfigError
from facecrm.keys import derived_key

if TYPE_CHECKING:  # the face service and its models: `facecrm stores qr`, `otp outbox` need none
    from facecrm.crm.service import FaceCRM
    from facecrm.vision.types import Image

CHANNEL = "self_service"
CODE_DIGITS = 6
CODE_TTL = timedelta(minutes=10)
MAX_ATTEMPTS = 5
FORM_MAX_AGE = 3600.0  # a page left open longer is reloaded (the consent text may change)
TAG_LENGTH = 16  # hex characters of the contact key carried in a personal session
PURPOSES = ("enroll", "signin")
PHONE = re.compile(r"^\+?[0-9]{8,15}\Z")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}\Z")
BODY = "Your {store} code is {code}. It expires in 10 minutes."  # what the sender delivers
CODE_IN_BODY = re.compile(rf"code is ([0-9]{{{CODE_DIGITS}}})\. It expires in 10 minutes\.$")
PURGE_SECONDS = 30.0  # how often the server deletes expired codes (and their destinations)
log = logging.getLogger("facecrm.selfservice")


class TooManyRequestsError(RateLimitedError):
    """Too many self-service requests from one address or codes to one destination: the
    POS limit's 429, reason `rate_limited` and `Retry-After`, in the flow's own words."""

    def __init__(self, what: str, retry_after: float) -> None:
        super().__init__(retry_after)
        self.what = what

    @property
    def detail(self) -> str:
        return f"too many {self.what}; try again in {self.retry_after} s"

    def __str__(self) -> str:
        return self.detail


def principal(store_id: str, customer_id: str | None = None) -> Principal:
    """The customer acting on their own phone, in the store whose link they came through.

    Built here only, for the one customer a verified code or personal session names.
    """
    return Principal(
        "customer",
        customer_id or "self-service",
        "self-service",
        SELF_SERVICE,
        frozenset({store_id}),
    )


# -- contacts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contact:
    kind: str  # email or phone
    value: str  # normalised: what is stored on the customer and what a code is sent to

    @property
    def channel(self) -> str:
        return "email" if self.kind == "email" else "sms"


def parse_contact(raw: str) -> Contact:
    """An e-mail address or phone number as typed, normalised (reason `bad_contact`)."""
    raw = raw.strip()
    if "@" in raw:
        try:
            address = validate_email(raw, check_deliverability=False)
        except EmailNotValidError:
            raise InvalidError("not an e-mail address", reason="bad_contact") from None
        return Contact("email", address.normalized.lower())
    phone = re.sub(r"[\s().-]", "", raw)
    if not PHONE.match(phone):
        raise InvalidError(
            "give an e-mail address or a phone number (8 to 15 digits)", reason="bad_contact"
        )
    return Contact("phone", phone)


# -- the sender of codes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OtpMessage:
    challenge_id: str
    channel: str  # email or sms
    destination: str
    code: str
    body: str
    expires_at: datetime


class OtpSender(Protocol):
    """Delivers a one-time code. `send` runs inside the transaction that creates the
    challenge: raising refuses the code and stores nothing. A deployment's SMS or e-mail
    sender is named by `FACECRM_OTP_SENDER=package.module:Class` (built with the settings);
    it should queue, not wait on a slow gateway, and keep the destination no longer than
    delivery takes."""

    def send(self, session: Session, message: OtpMessage) -> None: ...


class OutboxSender:
    """The embedded sender: the code waits in `otp_outbox` for a relay (or a test) to read.

    The row goes with its challenge (used, locked or expired): see `purge_expired`.
    """

    def send(self, session: Session, message: OtpMessage) -> None:
        session.add(
            OtpOutbox(
                challenge_id=message.challenge_id,
                channel=message.channel,
                destination=message.destination,
                body=message.body,
                expires_at=message.expires_at,
            )
        )


@dataclass(frozen=True, slots=True)
class PendingCode:
    """A code waiting in the embedded sender's outbox, as an operator delivers it."""

    channel: str  # email or sms
    destination: str
    code: str | None  # read from the message (None: a body this module did not write)
    body: str
    expires_at: datetime


def pending_codes(
    session: Session, who: Principal, destination: str | None = None
) -> list[PendingCode]:
    """The embedded sender's codes still waiting (newest first), optionally to one
    `destination` (an e-mail address or phone as typed). A pilot's or a test's way to
    deliver codes by hand before an SMS or e-mail sender is plugged in; other senders keep
    nothing here. Admins and the CLI only (destinations are in clear); audited
    (`otp_outbox_read`: how many, never to whom)."""
    who.require(Permission.OTP_OUTBOX_READ)
    purge_expired(session, utcnow())
    query = select(OtpOutbox).order_by(OtpOutbox.id.desc())
    if destination is not None:
        query = query.where(OtpOutbox.destination == parse_contact(destination).value)
    rows = session.scalars(query).all()
    audit.record(session, who, "otp_outbox_read", None, None, codes=len(rows))
    return [
        PendingCode(
            row.channel,
            row.destination,
            found.group(1) if (found := CODE_IN_BODY.search(row.body)) else None,
            row.body,
            row.expires_at,
        )
        for row in rows
    ]


def sender_for(settings: Settings) -> OtpSender:
    """The configured sender (`FACECRM_OTP_SENDER`)."""
    if settings.otp_sender == "outbox":
        return OutboxSender()
    module, _, name = settings.otp_sender.partition(":")
    try:
        factory: Callable[[Settings], OtpSender] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"FACECRM_OTP_SENDER: cannot load {settings.otp_sender!r}") from exc
    return factory(settings)


# -- what the pages show -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Incentive:
    text: str
    points: int


@dataclass(frozen=True, slots=True)
class Landing:
    """What the self-enrollment page shows for a store (nothing personal: not audited)."""

    store_id: str
    store_name: str
    texts: list[ConsentText]  # every active translation (the customer may switch)
    language: str  # the one shown first
    options: enrollment.Options
    incentive: Incentive | None


@dataclass(frozen=True, slots=True)
class SelfSession:
    """A personal session: exactly one customer, the store it was opened in, and a tag of
    the contact that opened it (no longer verified for them: the session is over)."""

    customer_id: str
    store_id: str
    tag: str


@dataclass(frozen=True, slots=True)
class Held:
    """What the personal page shows: what is held about the customer."""

    customer: Customer
    consents: list[dict[str, Any]]
    templates: int
    visits: int
    purchases: list[Purchase]
    incentive: CustomerIncentive | None
    contacts: list[str]  # kinds verified (email, phone)


@dataclass(frozen=True, slots=True)
class SelfEnrollment:
    """The last step of the flow, as sent by the phone."""

    name: str
    contact: str
    challenge: str
    code: str
    text_id: int
    consent: bool
    show_photo: bool = False
    age_confirmed: int | None = None


def choose_language(accept: str, available: Sequence[str], default: str) -> str:
    """The customer's language: the best of `Accept-Language` (q-values, then a primary
    subtag such as `fr` for `fr-CA`) among the texts there are, else the store's."""
    wanted: list[tuple[float, int, str]] = []
    for n, item in enumerate(accept.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and q > 0:
            wanted.append((-q, n, tag.strip().lower()))
    lowered = {a.lower(): a for a in available}
    for _, _, tag in sorted(wanted):
        for candidate in (tag, tag.split("-")[0]):
            if candidate in lowered:
                return lowered[candidate]
    if default in available:
        return default
    return "en" if "en" in available or not available else available[0]


# -- links (staff) --------------------------------------------------------------------------


def link(session: Session, who: Principal, store: str, rotate: bool = False) -> tuple[Store, str]:
    """A store's (by id or code) link token, made on first use; `rotate` replaces it (the
    old QR codes stop working). Admins and the CLI; audited (`self_service_link`) when made."""
    who.require(Permission.STORES_WRITE)
    found = session.get(Store, store) or session.scalar(select(Store).where(Store.code == store))
    if found is None:
        raise NotFoundError(f"no store {store!r}")
    row = session.get(SelfServiceLink, found.id)
    if row is not None and not rotate:
        return found, row.token
    token = secrets.token_urlsafe(24)
    if row is None:
        session.add(SelfServiceLink(store_id=found.id, token=token))
    else:
        row.token, row.created_at = token, utcnow()
    session.flush()
    audit.record(session, who, "self_service_link", None, found.id, rotated=row is not None)
    return found, token


def store_for(session: Session, token: str) -> Store:
    """The store of a link token (404 for anything else: a guess learns nothing)."""
    store = None
    if TOKEN.match(token):
        store = session.scalar(
            select(Store).join(SelfServiceLink).where(SelfServiceLink.token == token)
        )
    if store is None:
        raise NotFoundError("no such page")
    return store


class SelfService:
    """The rules of self-enrollment and the personal page, over a `FaceCRM`.

    `counters` are the server's (the database: shared by every process); `clock` gives
    wall-clock seconds (tests move it).
    """

    def __init__(
        self,
        crm: FaceCRM,
        counters: Counters,
        sender: OtpSender | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.crm = crm
        self.settings = crm.settings
        self.sender = sender or sender_for(crm.settings)
        self.clock = clock
        s = crm.settings
        self._codes_by_address = RateLimiter(
            s.self_codes_per_address_hour, 3600.0, clock, counters, "self_code_ip"
        )
        self._codes_by_destination = RateLimiter(
            s.self_codes_per_destination_hour, 3600.0, clock, counters, "self_code_dst"
        )
        self._requests = RateLimiter(
            s.self_requests_per_address_minute, 60.0, clock, counters, "self_request"
        )
        self._code_key = derived_key(s, "self-service-otp")
        self._contact_key = derived_key(s, "self-service-contact")
        self._form_key = derived_key(s, "self-service-form")

    def landing(self, token: str, accept_language: str, chosen: str | None) -> Landing:
        """The page for a store's link, in the chosen language or the browser's."""
        with self.crm.sessions() as session:
            store = store_for(session, token)
            options = enrollment.effective(session, store.id)
            texts = [
                t
                for t in (
                    consent_text.active_for(session, Purpose.IN_STORE_RECOGNITION, language)
                    for language in consent_text.languages(session, Purpose.IN_STORE_RECOGNITION)
                )
                if t is not None
            ]
            available = [t.language for t in texts]
            language = (
                chosen
                if chosen in available
                else choose_language(accept_language, available, options.language)
            )
            return Landing(store.id, store.name, texts, language, options, self.incentive())

    def store(self, token: str) -> tuple[str, str]:
        """(id, name) of the store a link token names; `NotFoundError` for any other token."""
        with self.crm.sessions() as session:
            store = store_for(session, token)
            return store.id, store.name

    def incentive(self) -> Incentive | None:
        text = self.settings.self_incentive_text.strip()
        return Incentive(text, self.settings.self_incentive_points) if text else None

    # -- bot resistance ------------------------------------------------------------------

    def form_nonce(self, store_id: str) -> str:
        """A signed nonce for the page's forms: when it was issued, for which store."""
        claims = {
            "typ": "self_form",
            "store": store_id,
            "iat": self.clock(),
            "n": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._form_key, algorithm="HS256")

    def check_nonce(self, nonce: str, store_id: str) -> None:
        """Refuse a form not issued by this server for this store (`bad_form`), sent sooner
        than a person could fill it in (`too_fast`), or older than an hour (`bad_form`)."""
        try:
            claims = jwt.decode(nonce, self._form_key, algorithms=["HS256"])
        except jwt.PyJWTError:
            claims = {}
        issued = claims.get("iat")
        age = self.clock() - float(issued) if isinstance(issued, int | float) else -1.0
        if claims.get("typ") != "self_form" or claims.get("store") != store_id:
            raise InvalidError("the form has expired; reload the page", reason="bad_form")
        if not 0 <= age <= FORM_MAX_AGE:
            raise InvalidError("the form has expired; reload the page", reason="bad_form")
        if age < self.settings.self_min_fill_seconds:
            raise InvalidError("that was too fast; try again in a moment", reason="too_fast")

    def _charge(self, limiter: RateLimiter, key: str, what: str) -> None:
        if not limiter.allow(key):
            raise TooManyRequestsError(what, limiter.retry_after(key))

    def request(self, address: str) -> None:
        """Count one request of the flow from `address` (photo checks, enrollments,
        sign-ins, personal page changes): 429 past the limit."""
        self._charge(self._requests, address, "requests")

    # -- the selfie ----------------------------------------------------------------------

    def check_photo(self, address: str, load: Callable[[], Image]) -> str | None:
        """The live feedback on a selfie (`load` decodes it, once the request is counted):
        None when it passes the kiosk's quality gate, else the gate's reason. Nothing is
        kept, identified or audited: the photo is not compared with anyone."""
        from facecrm.vision.pipeline import QualityError  # loaded with `crm.pipeline`

        self.request(address)
        try:
            self.crm.pipeline.enrollment_face(load())
        except QualityError as exc:
            return exc.reason
        return None

    # -- codes -----------------------------------------------------------------------------

    def _hash_code(self, challenge_id: str, code: str) -> str:
        return hmac.new(
            self._code_key, f"{challenge_id}:{code}".encode(), hashlib.sha256
        ).hexdigest()

    def contact_key(self, contact: Contact) -> str:
        message = f"{contact.kind}:{contact.value}".encode()
        return hmac.new(self._contact_key, message, hashlib.sha256).hexdigest()

    def send_code(
        self, address: str, token: str, raw_contact: str, purpose: str, nonce: str
    ) -> str:
        """Send a code to `raw_contact`; returns the challenge id the page sends back.

        For `signin`, a contact no customer verified gets nothing, and the answer looks
        the same (a random id no code will ever match).
        """
        if purpose not in PURPOSES:
            raise InvalidError("purpose is enroll or signin", reason="bad_purpose")
        contact = parse_contact(raw_contact)
        key = self.contact_key(contact)
        with db.transaction(self.crm.sessions) as session:
            store = store_for(session, token)
            self.check_nonce(nonce, store.id)
        self._charge(self._codes_by_address, address, "codes from this address")
        self._charge(self._codes_by_destination, key, "codes to this address or phone")
        now = utcnow()
        with db.transaction(self.crm.sessions) as session:
            purge_expired(session, now)
            known = session.get(VerifiedContact, key) is not None
            sent = purpose == "enroll" or known
            challenge_id = secrets.token_hex(16)
            if sent:
                code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
                expires = now + CODE_TTL
                session.add(
                    OtpChallenge(
                        id=challenge_id,
                        purpose=purpose,
                        store_id=store.id,
                        destination_key=key,
                        code_hash=self._hash_code(challenge_id, code),
                        created_at=now,
                        expires_at=expires,
                    )
                )
                session.flush()
                body = BODY.format(store=store.name, code=code)
                self.sender.send(
                    session,
                    OtpMessage(challenge_id, contact.channel, contact.value, code, body, expires),
                )
            audit.record(
                session,
                principal(store.id),
                "self_code_send",
                None,
                store.id,
                purpose=purpose,
                channel=contact.channel,
                sent=sent,
            )
        return challenge_id

    def _consume(
        self, store_id: str, challenge_id: str, contact: Contact, code: str, purpose: str
    ) -> None:
        """Check a code; used once. A wrong one costs an attempt (the last one ends the
        challenge); all refusals say the same (`bad_code`), and are audited."""
        now = utcnow()
        failure: str | None = None
        # locked: a code is used once, and parallel wrong guesses each cost an attempt
        with db.transaction(self.crm.sessions, write_lock=True) as session:
            purge_expired(session, now)
            row = (
                session.get(OtpChallenge, challenge_id[:64], with_for_update=True)
                if challenge_id
                else None
            )
            expected = row.code_hash if row is not None else self._hash_code("-", "-")
            given = self._hash_code(challenge_id, code.strip())
            same = hmac.compare_digest(expected, given)  # constant time, row or not
            if (
                row is None
                or row.purpose != purpose
                or row.store_id != store_id
                or not hmac.compare_digest(row.destination_key, self.contact_key(contact))
            ):
                failure = "unknown"
            elif not same:
                row.attempts += 1
                failure = "wrong"
                if row.attempts >= MAX_ATTEMPTS:
                    failure = "locked"
                    _drop(session, row.id)
            else:
                _drop(session, row.id)
            if failure is not None:
                audit.record(
                    session, principal(store_id), "self_code_failed", None, store_id, why=failure
                )
        if failure is not None:
            raise InvalidError(
                "the code is wrong or has expired; ask for a new one", reason="bad_code"
            )

    # -- enrollment --------------------------------------------------------------------

    def enroll(
        self, address: str, token: str, form: SelfEnrollment, image: Image, nonce: str
    ) -> SelfSession:
        """Enroll the customer whose code checks out; returns their personal session.

        The photo passes the quality gate before the code is spent (a blurred selfie is
        retaken, not a new code); the contact then becomes the customer's, verified, and
        the incentive is granted, in the enrollment's own transaction.
        """
        from facecrm.crm.service import EnrollmentError, Photo  # loaded with `self.crm`
        from facecrm.vision.pipeline import QualityError

        self.request(address)
        if not form.consent:
            raise InvalidError("agree to the consent text first", reason="no_consent")
        contact = parse_contact(form.contact)
        with self.crm.sessions() as session:
            store = store_for(session, token)
        self.check_nonce(nonce, store.id)
        try:
            self.crm.pipeline.enrollment_face(image)
        except QualityError as exc:
            raise EnrollmentError("selfie", exc) from exc
        self._consume(store.id, form.challenge, contact, form.code, "enroll")
        key = self.contact_key(contact)
        with self.crm.sessions() as session:  # said before the face is compared with anyone
            if session.get(VerifiedContact, key) is not None:
                raise _contact_enrolled()
        incentive = self.incentive()
        who = principal(store.id)

        def verified(session: Session, customer: Customer) -> None:
            if session.get(VerifiedContact, key) is not None:  # enrolled meanwhile
                raise _contact_enrolled()
            session.add(
                VerifiedContact(contact_key=key, customer_id=customer.id, kind=contact.kind)
            )
            if incentive is not None:
                session.add(
                    CustomerIncentive(
                        customer_id=customer.id,
                        text=incentive.text,
                        points=incentive.points,
                        store_id=store.id,
                    )
                )
                audit.record(
                    session, who, "incentive_grant", customer.id, store.id, points=incentive.points
                )
            session.flush()

        customer = self.crm.enroll(
            form.name,
            [Photo(CHANNEL, image)],
            form.text_id,
            CHANNEL,
            who,
            profile={contact.kind: contact.value, "show_photo": form.show_photo},
            store_id=store.id,
            age_confirmed=form.age_confirmed,
            then=verified,
        )
        return SelfSession(customer.id, store.id, key[:TAG_LENGTH])

    # -- the personal page ----------------------------------------------------------------

    def sign_in(
        self, address: str, token: str, raw_contact: str, challenge: str, code: str, nonce: str
    ) -> SelfSession:
        """A returning customer's personal session, by a code sent to their verified contact."""
        self.request(address)
        contact = parse_contact(raw_contact)
        with self.crm.sessions() as session:
            store = store_for(session, token)
        self.check_nonce(nonce, store.id)
        self._consume(store.id, challenge, contact, code, "signin")
        key = self.contact_key(contact)
        with db.transaction(self.crm.sessions) as session:
            row = session.get(VerifiedContact, key)
            if row is None:  # erased between the code and now
                raise InvalidError("the code is wrong or has expired", reason="bad_code")
            audit.record(
                session,
                principal(store.id, row.customer_id),
                "self_sign_in",
                row.customer_id,
                store.id,
            )
            return SelfSession(row.customer_id, store.id, key[:TAG_LENGTH])

    def resume(self, customer_id: str, store_id: str, tag: str) -> SelfSession | None:
        """The session a cookie names, while the contact that opened it is still verified
        for that customer (erasure ends it)."""
        if len(tag) != TAG_LENGTH:
            return None
        with self.crm.sessions() as session:
            found = session.scalar(
                select(func.count())
                .select_from(VerifiedContact)
                .where(
                    VerifiedContact.customer_id == customer_id,
                    VerifiedContact.contact_key.startswith(tag, autoescape=True),
                )
            )
        return SelfSession(customer_id, store_id, tag) if found else None

    def held(self, me: SelfSession) -> Held:
        """What is held about the customer, for their own eyes; audited (`self_view`)."""
        with db.transaction(self.crm.sessions) as session:
            customer = customers.load(session, me.customer_id)
            consents = [
                {
                    "purpose": c.purpose,
                    "version": c.text_version,
                    "language": c.text.language if c.text is not None else None,
                    "given_at": c.given_at,
                    "withdrawn_at": c.withdrawn_at,
                    "active": c.withdrawn_at is None,
                }
                for c in customer.consents
            ]
            visits = session.scalar(
                select(func.count()).select_from(Visit).where(Visit.customer_id == customer.id)
            )
            purchases = list(
                session.scalars(
                    select(Purchase)
                    .where(Purchase.customer_id == customer.id)
                    .order_by(Purchase.at)
                )
            )
            contacts = sorted(
                session.scalars(
                    select(VerifiedContact.kind).where(VerifiedContact.customer_id == customer.id)
                )
            )
            audit.record(session, self._me(me), "self_view", customer.id, me.store_id)
            return Held(
                customer,
                consents,
                len(customer.templates),
                int(visits or 0),
                purchases,
                session.get(CustomerIncentive, customer.id),
                contacts,
            )

    def export(self, me: SelfSession) -> tuple[customers.Export, CustomerIncentive | None]:
        """Everything held (the data-subject export staff give, plus the incentive);
        audited (`customer_export`, by the customer)."""
        with db.transaction(self.crm.sessions) as session:
            found = customers.export(session, self._me(me), me.customer_id)
            return found, session.get(CustomerIncentive, me.customer_id)

    def withdraw(self, address: str, me: SelfSession, purpose: Purpose) -> None:
        """Withdraw one purpose (recognition: the face templates go at once)."""
        self.request(address)
        self.crm.withdraw(me.customer_id, purpose, self._me(me), CHANNEL, me.store_id)

    def erase(self, address: str, me: SelfSession) -> None:
        """Erase the customer: everything, the verified contacts (and so the session) too."""
        self.request(address)
        who = self._me(me)
        who.require(Permission.CUSTOMERS_ERASE)
        self.crm.delete_customer(me.customer_id, who)

    def _me(self, me: SelfSession) -> Principal:
        return principal(me.store_id, me.customer_id)

    # -- housekeeping --------------------------------------------------------------------

    def purge(self, now: datetime | None = None) -> int:
        with db.transaction(self.crm.sessions) as session:
            return purge_expired(session, now or utcnow())

    def start_purger(self, stop: threading.Event) -> threading.Thread:
        """Purge expired codes every `PURGE_SECONDS` while the server runs: a destination
        outlives its code by at most that, even when no one comes by afterwards."""

        def loop() -> None:
            while not stop.wait(PURGE_SECONDS):
                try:
                    self.purge()
                except Exception:  # the purger must survive a failed run (a busy database)
                    log.exception("purging expired one-time codes failed")

        thread = threading.Thread(target=loop, daemon=True, name="otp-purge")
        thread.start()
        return thread


def _contact_enrolled() -> ConflictError:
    """Safe to say: the code proved the contact is the caller's."""
    return ConflictError(
        "this e-mail address or phone is already enrolled: sign in instead",
        reason="contact_enrolled",
    )


def _drop(session: Session, challenge_id: str) -> None:
    """A challenge and its outbox row (not left to the foreign key: least data, explicitly)."""
    session.execute(delete(OtpOutbox).where(OtpOutbox.challenge_id == challenge_id))
    session.execute(delete(OtpChallenge).where(OtpChallenge.id == challenge_id))


def purge_expired(session: Session, now: datetime) -> int:
    """Delete expired challenges and outbox rows (a flow nobody finished); how many
    challenges went. Cheap (an index range), so every self-service request runs it."""
    session.execute(delete(OtpOutbox).where(OtpOutbox.expires_at <= now))
    done = session.execute(delete(OtpChallenge).where(OtpChallenge.expires_at <= now))
    return int(getattr(done, "rowcount", 0) or 0)
