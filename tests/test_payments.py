"""Face payment, first round (issue 14): consent, set-up and the tills' payment sessions.

Services on SQLite and PostgreSQL, the API through a real server on both: payment needs
both consents, withdrawing either has its effect, card numbers are refused, the phone's
last 4 digits are not readable at rest, limits and amounts are checked, sessions are
made once per idempotency key, expire, and stay in their store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update

from facecrm.config import Settings
from facecrm.crm import accounts, customers, db, payments, selfservice
from facecrm.crm.authz import SYSTEM, Principal
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.customers import ConsentGrant
from facecrm.crm.errors import ConflictError, Forbidden, InvalidError, NotFoundError
from facecrm.crm.models import FaceTemplate, PaymentProfile, PaySession, Purpose
from facecrm.crm.payments import (
    CardNumberRefused,
    DeclineReason,
    PaymentConsentError,
    PaymentSetup,
    SessionState,
)
from facecrm.crm.service import FaceCRM, Photo
from facecrm.keys import derived_key
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import answer_values, serve

TOKEN = "wlt_7Hq2Zx9PaYtOkEn3"  # an opaque wallet token (distinctive, to find on disk)
SETUP = PaymentSetup(
    token=TOKEN,
    provider="examplepay",
    phone_last4="4821",
    currency="EUR",
    limit_per_transaction=5_000,
    limit_per_day=20_000,
)
PASSWORD = "correct horse battery"


def _consent(crm: FaceCRM, customer_id: str, *purposes: Purpose) -> None:
    with db.transaction(crm.sessions) as session:
        for purpose in purposes:
            customers.give_consent(
                session, SYSTEM, customer_id, ConsentGrant(purpose, None, "kiosk")
            )


def _customer(crm: FaceCRM, *purposes: Purpose) -> str:
    with db.transaction(crm.sessions) as session:
        customer_id = customers.create(session, SYSTEM, {"name": "Pay Tester"}).id
    _consent(crm, customer_id, *purposes)
    return customer_id


def _enroll(crm: FaceCRM, customer_id: str, setup: PaymentSetup = SETUP) -> None:
    with db.transaction(crm.sessions) as session:
        payments.enroll(session, crm.settings, SYSTEM, customer_id, setup)


def _payable(crm: FaceCRM, customer_id: str) -> DeclineReason | None:
    with crm.sessions() as session:
        customer = customers.load(session, customer_id)
        return payments.payable(customer, session.get(PaymentProfile, customer_id))


BOTH = (Purpose.IN_STORE_RECOGNITION, Purpose.FACE_PAYMENT)


# -- consent -------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [(), (Purpose.IN_STORE_RECOGNITION,), (Purpose.FACE_PAYMENT,)])
def test_set_up_needs_both_consents(crm: FaceCRM, given: tuple[Purpose, ...]) -> None:
    customer_id = _customer(crm, *given)
    with pytest.raises(PaymentConsentError):
        _enroll(crm, customer_id)
    with crm.sessions() as session:
        assert session.get(PaymentProfile, customer_id) is None


def test_withdrawing_payment_stops_payment_and_keeps_recognition(crm: FaceCRM, load: Any) -> None:
    photo = Photo("p", load("identities/rose_leslie/1.jpg"))
    rose = crm.enroll("Rose", [photo], CURRENT, "kiosk", SYSTEM).id
    _consent(crm, rose, Purpose.FACE_PAYMENT)
    _enroll(crm, rose)
    assert _payable(crm, rose) is None

    crm.withdraw(rose, Purpose.FACE_PAYMENT, SYSTEM)

    assert _payable(crm, rose) == DeclineReason.NOT_ENROLLED_FOR_PAYMENT
    with crm.sessions() as session:
        assert session.get(PaymentProfile, rose) is None  # the set-up went with the consent
        customer = customers.load(session, rose)
        assert customer.active_consent(Purpose.IN_STORE_RECOGNITION) is not None
        assert session.scalar(select(func.count()).where(FaceTemplate.customer_id == rose))
    (face,) = crm.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert face.match is not None and face.match.customer_id == rose


def test_withdrawing_recognition_stops_both(crm: FaceCRM) -> None:
    customer_id = _customer(crm, *BOTH)
    _enroll(crm, customer_id)
    crm.withdraw(customer_id, Purpose.IN_STORE_RECOGNITION, SYSTEM)
    assert _payable(crm, customer_id) == DeclineReason.NOT_ENROLLED_FOR_PAYMENT


# -- what is stored ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "4111111111111111",  # Visa test number
        "4111 1111 1111 1111",
        "tok_4111-1111-1111-1111",
        "5500005555555559",  # Mastercard
        "378282246310005",  # Amex, 15 digits
        "6011000990139424abc",
    ],
)
def test_card_numbers_are_refused(crm: FaceCRM, token: str) -> None:
    customer_id = _customer(crm, *BOTH)
    with pytest.raises(CardNumberRefused) as refused:
        _enroll(crm, customer_id, PaymentSetup(**{**_fields(SETUP), "token": token}))
    assert refused.value.reason == "card_number_refused" and refused.value.status == 422
    with crm.sessions() as session:
        assert session.get(PaymentProfile, customer_id) is None


@pytest.mark.parametrize(
    "token", ["4111111111111112", "tok_20261204_000123", "wlt_" + "9" * 30, TOKEN]
)
def test_tokens_that_are_no_card_numbers_are_kept(token: str) -> None:
    assert not payments.looks_like_pan(token)
    assert payments.check_token(token) == token


def _fields(setup: PaymentSetup) -> dict[str, Any]:
    return {name: getattr(setup, name) for name in PaymentSetup.__dataclass_fields__}


def test_phone_digits_are_a_keyed_mac_at_rest(crm: FaceCRM) -> None:
    customer_id = _customer(crm, *BOTH)
    _enroll(crm, customer_id)
    with crm.engine.connect() as connection:  # the raw row, as a copy of the database has it
        row = connection.execute(
            text("SELECT * FROM payment_profiles WHERE customer_id = :c"), {"c": customer_id}
        ).one()
    # the columns that are random (ids, the MAC's hex, microseconds) may hold "4821" by chance
    by_chance = {"customer_id", "phone_last4_mac", "created_at", "updated_at", "locked_until"}
    assert not [v for k, v in row._mapping.items() if k not in by_chance and "4821" in str(v)]
    key = derived_key(crm.settings, payments.KEY_PURPOSE)
    expected = hmac.new(key, f"{customer_id}:4821".encode(), hashlib.sha256).hexdigest()
    assert row.phone_last4_mac == expected
    assert row.phone_last4_mac != hashlib.sha256(b"4821").hexdigest()  # keyed, not plain
    with crm.sessions() as session:
        profile = session.get(PaymentProfile, customer_id)
        assert profile is not None
        assert payments.check_last4(crm.settings, profile, "4821")
        assert not payments.check_last4(crm.settings, profile, "4822")
        assert not payments.check_last4(crm.settings, profile, "")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"limit_per_transaction": 30_000}, "bad_limits"),  # above the daily limit
        ({"limit_per_transaction": 0}, "bad_amount"),
        ({"limit_per_day": -1}, "bad_amount"),
        ({"limit_per_day": payments.MAX_AMOUNT + 1}, "bad_amount"),
        ({"limit_per_transaction": True}, "bad_amount"),
        ({"currency": "EURO"}, "bad_currency"),
        ({"currency": "eur"}, "bad_currency"),
        ({"phone_last4": "48a1"}, "bad_last4"),
        ({"phone_last4": "48210"}, "bad_last4"),
        ({"provider": "Example Pay"}, "bad_provider"),
        ({"token": "short"}, "bad_payment_token"),
    ],
)
def test_bad_set_ups_are_refused(crm: FaceCRM, change: dict[str, Any], reason: str) -> None:
    customer_id = _customer(crm, *BOTH)
    with pytest.raises(InvalidError) as refused:
        _enroll(crm, customer_id, PaymentSetup(**{**_fields(SETUP), **change}))
    assert refused.value.reason == reason
    _enroll(crm, customer_id)
    partial = PaymentSetup(**change)  # an update is held to the same rules
    with pytest.raises(InvalidError) as refused, db.transaction(crm.sessions) as session:
        payments.update(session, crm.settings, SYSTEM, customer_id, partial)
    assert refused.value.reason == reason
    with crm.sessions() as session:
        profile = session.get(PaymentProfile, customer_id)
        assert profile is not None and profile.limit_per_transaction == 5_000


def test_who_may_set_up_payment(crm: FaceCRM) -> None:
    customer_id = _customer(crm, *BOTH)
    other = _customer(crm, *BOTH)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "P1", "Pay 1", SYSTEM)
        staff = accounts.create_staff(
            session, "clerk", PASSWORD, "associate", [store.id], principal=SYSTEM
        )
        clerk = Principal("staff", staff.id, "clerk", "associate", frozenset({store.id}))
        till_key = accounts.create_device(session, store.id, "pos", principal=SYSTEM)[1]
        till = accounts.key_principal(session, till_key)
    me = selfservice.principal(store.id, customer_id)
    with pytest.raises(InvalidError) as refused, db.transaction(crm.sessions) as session:
        payments.enroll(session, crm.settings, clerk, customer_id, SETUP)
    assert refused.value.reason == "customer_not_present"
    assert till is not None
    for principal in (till, selfservice.principal(store.id, other)):
        with pytest.raises(Forbidden), db.transaction(crm.sessions) as session:
            payments.enroll(session, crm.settings, principal, customer_id, SETUP)
    with db.transaction(crm.sessions) as session:  # the customer themself
        payments.enroll(session, crm.settings, me, customer_id, SETUP)
    with db.transaction(crm.sessions) as session:  # an associate, with the customer there
        payments.enroll(session, crm.settings, clerk, other, SETUP, customer_present=True)
    with pytest.raises(ConflictError), db.transaction(crm.sessions) as session:
        payments.enroll(session, crm.settings, clerk, other, SETUP, customer_present=True)


def test_erasure_leaves_no_payment_byte(crm: FaceCRM) -> None:
    customer_id = _customer(crm, *BOTH)
    _enroll(crm, customer_id)
    crm.delete_customer(customer_id, SYSTEM)
    with crm.sessions() as session:
        assert session.get(PaymentProfile, customer_id) is None
    if crm.engine.dialect.name == "sqlite":  # the files themselves (see test_erasure.py)
        hits = [
            path for path in _files(crm.settings.data_dir) if TOKEN.encode() in path.read_bytes()
        ]
        assert hits == []


def _files(data_dir: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        yield from (Path(root) / f for f in files)


# -- the session state machine -------------------------------------------------------------


def test_state_machine_transitions() -> None:
    row = PaySession(state="looking")
    with pytest.raises(ConflictError):
        payments.advance(row, SessionState.AUTHORISED)  # never without the challenge
    payments.advance(row, SessionState.CHALLENGE)
    payments.advance(row, SessionState.STEP_UP)
    payments.advance(row, SessionState.DECLINED, DeclineReason.STEP_UP_FAILED)
    assert (row.state, row.decline_reason) == ("declined", "step_up_failed")
    for state in SessionState:  # nothing leaves a final state
        with pytest.raises(ConflictError):
            payments.advance(row, state, DeclineReason.EXPIRED)
    assert set(DeclineReason) >= {DeclineReason.EXPIRED, DeclineReason.AMBIGUOUS_MATCH}
    assert all(SessionState.DECLINED in payments.TRANSITIONS[s] for s in ("looking", "step_up"))


# -- the API, through a real server --------------------------------------------------------


@pytest.fixture(scope="module")
def api(module_settings: Settings, pipeline: FacePipeline) -> Iterator[dict[str, Any]]:
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        a = accounts.create_store(session, "A", "A", SYSTEM)
        b = accounts.create_store(session, "B", "B", SYSTEM)
        accounts.create_staff(session, "clerk", PASSWORD, "associate", [a.id], principal=SYSTEM)
        till_a = accounts.create_device(session, a.id, "pos", principal=SYSTEM)[1]
        till_b = accounts.create_device(session, b.id, "pos", principal=SYSTEM)[1]
    with serve(create_app(crm)) as url:
        token = httpx.post(
            f"{url}/api/v1/auth/token", data={"username": "clerk", "password": PASSWORD}
        ).json()["access_token"]
        clients = {
            "clerk": httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ),
            "till": httpx.Client(base_url=url, headers={"X-API-Key": till_a}, timeout=60),
            "other": httpx.Client(base_url=url, headers={"X-API-Key": till_b}, timeout=60),
        }
        yield {"crm": crm, **clients}
        for client in clients.values():
            client.close()
    crm.engine.dispose()


def _count(crm: FaceCRM, model: type[Any]) -> int:
    with crm.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_api_set_up_and_withdrawal(api: dict[str, Any]) -> None:
    clerk: httpx.Client = api["clerk"]
    customer = clerk.post("/api/v1/customers", json={"name": "Ana Pay"}).json()["id"]
    base = f"/api/v1/customers/{customer}"
    body = {**_fields(SETUP), "customer_present": True}
    r = clerk.post(
        f"{base}/consents", json={"purpose": "in_store_recognition", "channel": "associate"}
    )
    assert r.status_code == 201, r.text
    r = clerk.post(f"{base}/payment", json=body)
    assert (r.status_code, r.json()["reason"]) == (409, "payment_consent_required")
    r = clerk.post(f"{base}/consents", json={"purpose": "face_payment", "channel": "associate"})
    assert r.status_code == 201, r.text

    before = _count(api["crm"], PaymentProfile)
    r = clerk.post(f"{base}/payment", json={**body, "token": "4111 1111 1111 1111"})
    assert (r.status_code, r.json()["reason"]) == (422, "card_number_refused")
    r = clerk.post(f"{base}/payment", json={**body, "customer_present": False})
    assert (r.status_code, r.json()["reason"]) == (422, "customer_not_present")
    assert _count(api["crm"], PaymentProfile) == before

    r = clerk.post(f"{base}/payment", json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["payable"] is True and out["token_hint"] == TOKEN[-4:]
    assert TOKEN not in r.text and not [v for v in answer_values(out) if "4821" in v]
    r = clerk.patch(f"{base}/payment", json={"limit_per_day": 9_000, "customer_present": True})
    assert r.status_code == 200 and r.json()["limit_per_day"] == 9_000
    r = clerk.patch(f"{base}/payment", json={"limit_per_day": 1, "customer_present": True})
    assert (r.status_code, r.json()["reason"]) == (422, "bad_limits")

    assert clerk.delete(f"{base}/consents/face_payment").status_code == 204
    assert clerk.get(f"{base}/payment").status_code == 404
    consents = clerk.get(base).json()["consents"]
    active = {c["purpose"] for c in consents if c.get("withdrawn_at") is None}
    assert "in_store_recognition" in active and "face_payment" not in active


def test_api_sessions(api: dict[str, Any]) -> None:
    till: httpx.Client = api["till"]
    body = {"amount": 1250, "currency": "EUR", "till": "till-3"}
    r = till.post("/api/v1/pay/sessions", json=body, headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["state"] == "looking" and made["decline_reason"] is None
    lifetime = datetime.fromisoformat(made["expires_at"]) - datetime.fromisoformat(
        made["created_at"]
    )
    assert lifetime == timedelta(seconds=60)

    again = till.post("/api/v1/pay/sessions", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.json()["id"] == made["id"]
    other = {**body, "amount": 1300}
    r = till.post("/api/v1/pay/sessions", json=other, headers={"Idempotency-Key": "k-1"})
    assert (r.status_code, r.json()["reason"]) == (409, "idempotency_key_reused")
    r = till.post("/api/v1/pay/sessions", json=body)  # no key: a new session each time
    assert r.status_code == 201 and r.json()["id"] != made["id"]

    path = f"/api/v1/pay/sessions/{made['id']}"
    assert till.get(path).json()["state"] == "looking"
    r = api["other"].get(path)  # another store's till
    assert (r.status_code, r.json()["reason"]) == (404, "not_found")
    assert api["clerk"].get(path).status_code == 403  # staff take no payments
    assert till.get("/api/v1/pay/sessions/nope").status_code == 404

    with db.transaction(api["crm"].sessions) as session:  # a minute later
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(
            update(PaySession).where(PaySession.id == made["id"]).values(expires_at=past)
        )
    expired = till.get(path).json()
    assert (expired["state"], expired["decline_reason"]) == ("declined", "expired")
    again = till.post("/api/v1/pay/sessions", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.json()["state"] == "declined"


def test_api_racing_retries_make_one_session(api: dict[str, Any]) -> None:
    """A till that retries before the first answer came: both requests in flight at once
    with one key make one session (the loser of the insert reads the winner's)."""
    till: httpx.Client = api["till"]
    body = {"amount": 990, "currency": "EUR", "till": "till-9"}
    before = _count(api["crm"], PaySession)
    headers = {"Idempotency-Key": "race-1"}
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: till.post("/api/v1/pay/sessions", json=body, headers=headers), range(4)
            )
        )
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert _count(api["crm"], PaySession) == before + 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount": 0}, "bad_amount"),
        ({"amount": -5}, "bad_amount"),
        ({"amount": payments.MAX_AMOUNT + 1}, "bad_amount"),
        ({"amount": 12.5}, None),
        ({"amount": "1250"}, None),
        ({"amount": 10**30}, None),
        ({"currency": "XXX"}, "bad_currency"),
        ({"currency": "eur"}, "bad_currency"),
        ({"currency": "EURO-LONG-CODE"}, None),
        ({"till": ""}, None),
        ({"till": "till\n3"}, "invalid"),
    ],
)
def test_api_bad_sessions_change_nothing(
    api: dict[str, Any], change: dict[str, Any], reason: str | None
) -> None:
    before = _count(api["crm"], PaySession)
    body = {"amount": 1250, "currency": "EUR", "till": "till-3", **change}
    r = api["till"].post("/api/v1/pay/sessions", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    if reason is not None:
        assert r.json()["reason"] == reason
    assert _count(api["crm"], PaySession) == before


def test_profile_read_needs_a_profile(crm: FaceCRM) -> None:
    customer_id = _customer(crm, *BOTH)
    with pytest.raises(NotFoundError), crm.sessions() as session:
        payments.get_profile(session, SYSTEM, customer_id)
