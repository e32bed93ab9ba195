"""Self-enrollment on the customer's own phone, over real HTTP on SQLite and PostgreSQL:
QR link → consent in the customer's language → selfie checked by the kiosk's gate → a
one-time code from the outbox → enrolled and identifiable; the personal page (export,
withdraw, erase); wrong, expired and exhausted codes; rate limits; bots; and every way of
reaching another customer's data."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy import delete, func, select, update

from conftest import Cli
from facecrm.config import Settings
from facecrm.crm import accounts, consent_text, db, selfservice
from facecrm.crm.authz import SYSTEM, Principal
from facecrm.crm.errors import Forbidden, InvalidError
from facecrm.crm.models import (
    AuditEvent,
    Consent,
    Customer,
    CustomerIncentive,
    FaceTemplate,
    OtpChallenge,
    OtpOutbox,
    Purpose,
    Role,
    ThrottleCounter,
    VerifiedContact,
    utcnow,
)
from facecrm.crm.service import FaceCRM
from facecrm.crm.throttle import MemoryCounters
from facecrm.errors import ConfigError
from facecrm.keys import derived_key, server_secret
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

PASSWORD = "correct horse battery"
FILL = 0.6  # the minimum fill time these tests run with (seconds)
FRENCH = "Je consens à la reconnaissance faciale en magasin."


@dataclass
class Site:
    url: str
    crm: FaceCRM
    store: str
    other_store: str
    token: str
    other_token: str
    staff: str  # an associate's bearer token

    def db(self):  # type: ignore[no-untyped-def]
        return db.transaction(self.crm.sessions)


@pytest.fixture(scope="module")
def site(module_settings: Settings, pipeline: FacePipeline) -> Iterator[Site]:
    module_settings.self_incentive_text = "A free coffee on your next visit"
    module_settings.self_incentive_points = 50
    module_settings.self_min_fill_seconds = FILL
    module_settings.self_codes_per_destination_hour = 3
    module_settings.self_codes_per_address_hour = 8
    module_settings.self_requests_per_address_minute = 12
    crm = FaceCRM(module_settings, pipeline=pipeline, migrate=True)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "S1", "Rue de Rivoli", SYSTEM).id
        other = accounts.create_store(session, "S2", "Other", SYSTEM).id
        accounts.create_staff(session, "alice", PASSWORD, "associate", [store], principal=SYSTEM)
        accounts.create_staff(session, "boss", PASSWORD, "admin", principal=SYSTEM)
        _, token = selfservice.link(session, SYSTEM, store)
        _, other_token = selfservice.link(session, SYSTEM, "S2")
        french = consent_text.active_for(session, Purpose.IN_STORE_RECOGNITION, "fr")
        if french is None or FRENCH not in french.body:  # a recognisable French text
            consent_text.create_version(
                session, SYSTEM, Purpose.IN_STORE_RECOGNITION, "fr", FRENCH, "test-fr"
            )
    with serve(create_app(crm)) as url:
        answer = httpx.post(
            f"{url}/api/v1/auth/token", data={"username": "alice", "password": PASSWORD}
        )
        yield Site(url, crm, store, other, token, other_token, answer.json()["access_token"])
    crm.engine.dispose()


@pytest.fixture(autouse=True)
def fresh_counters(site: Site) -> None:
    """Every test starts with unspent rate limits (they all come from 127.0.0.1) and no
    code left over by another."""
    with site.db() as session:
        session.execute(delete(ThrottleCounter))
        session.execute(delete(OtpOutbox))
        session.execute(delete(OtpChallenge))


@pytest.fixture()
def phone(site: Site) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.url, timeout=60) as client:
        yield client


def nonce(phone: httpx.Client, token: str) -> str:
    page = phone.get(f"/self/{token}")
    assert page.status_code == 200, page.text
    found = re.search(r'data-nonce="([^"]+)"', page.text)
    assert found
    time.sleep(FILL)  # a person takes longer than this to fill the form in
    return found.group(1)


def ask_code(
    phone: httpx.Client, site: Site, contact: str, form: str, purpose: str = "enroll"
) -> tuple[str, str | None]:
    """A code sent to `contact`: the challenge id, and the code as the outbox holds it."""
    answer = phone.post(
        f"/self/{site.token}/code", data={"contact": contact, "nonce": form, "purpose": purpose}
    )
    assert answer.status_code == 200, answer.text
    challenge = answer.json()["challenge"]
    with site.db() as session:
        row = session.scalar(select(OtpOutbox).where(OtpOutbox.challenge_id == challenge))
        if row is None:
            return challenge, None
        assert row.destination == re.sub(r"\s", "", contact.lower())
        found = re.search(r"\b(\d{6})\b", row.body)
        assert found
        return challenge, found.group(1)


def text_id(site: Site, language: str) -> int:
    with site.db() as session:
        text = consent_text.active_for(session, Purpose.IN_STORE_RECOGNITION, language)
        assert text is not None
        return text.id


def enroll(
    phone: httpx.Client,
    site: Site,
    faces: Path,
    contact: str,
    photo: str,
    name: str = "Rose",
    language: str = "en",
) -> httpx.Response:
    form = nonce(phone, site.token)
    challenge, code = ask_code(phone, site, contact, form)
    data = {
        "name": name,
        "contact": contact,
        "challenge": challenge,
        "code": code or "",
        "text_id": str(text_id(site, language)),
        "consent": "true",
        "nonce": form,
    }
    files = {"image": ("selfie.jpg", (faces / photo).read_bytes(), "image/jpeg")}
    return phone.post(f"/self/{site.token}/enroll", data=data, files=files)


def pending(site: Site) -> tuple[int, int]:
    with site.db() as session:
        return (
            int(session.scalar(select(func.count()).select_from(OtpChallenge)) or 0),
            int(session.scalar(select(func.count()).select_from(OtpOutbox)) or 0),
        )


def test_the_page_speaks_the_customers_language_and_shows_the_incentive(
    site: Site, phone: httpx.Client
) -> None:
    page = phone.get(f"/self/{site.token}", headers={"Accept-Language": "fr-CA,fr;q=0.9,en;q=0.5"})
    assert page.status_code == 200
    assert '<html lang="fr">' in page.text
    fr = text_id(site, "fr")
    assert re.search(rf'data-language="fr" data-text-id="{fr}"(?! hidden)>', page.text)
    assert "A free coffee on your next visit" in page.text and "50 points" in page.text
    chosen = phone.get(f"/self/{site.token}?lang=en", headers={"Accept-Language": "fr"})
    assert '<html lang="en">' in chosen.text
    assert 'capture="user"' in page.text
    # a store's id, a guess or a rotated token is no page
    for token in (site.store, "x" * 32, "short"):
        assert phone.get(f"/self/{token}").status_code == 404


def test_live_quality_feedback_is_the_kiosks_gate(
    site: Site, phone: httpx.Client, faces_dir: Path
) -> None:
    def check(photo: str) -> dict[str, object]:
        files = {"image": ("p.jpg", (faces_dir / photo).read_bytes(), "image/jpeg")}
        answer = phone.post(f"/self/{site.token}/check", files=files)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def stored() -> tuple[int, int]:
        with site.db() as session:
            return (
                int(session.scalar(select(func.count()).select_from(FaceTemplate)) or 0),
                int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0),
            )

    before = stored()
    assert check("identities/rose_leslie/1.jpg")["ok"] is True
    two = check("scenes/two_people.jpg")
    assert two["ok"] is False and two["reason"] == "multiple_faces" and two["message"]
    assert stored() == before  # a check keeps nothing and names no one


def test_enroll_on_the_phone_then_be_recognised_export_withdraw_erase(
    site: Site, phone: httpx.Client, faces_dir: Path
) -> None:
    answer = enroll(
        phone, site, faces_dir, "Rose@Example.org", "identities/rose_leslie/1.jpg", "Rose", "fr"
    )
    assert answer.status_code == 201, answer.text
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/self" in cookie
    with site.db() as session:
        customer = session.scalar(select(Customer).where(Customer.email == "rose@example.org"))
        assert customer is not None and customer.name == "Rose"
        rose = customer.id
        (consent,) = session.scalars(select(Consent).where(Consent.customer_id == rose))
        assert consent.channel == "self_service" and consent.store_id == site.store
        assert consent.text_id == text_id(site, "fr") and consent.witness == "customer:self-service"
        incentive = session.get(CustomerIncentive, rose)
        assert incentive is not None and incentive.points == 50
        assert session.scalar(select(VerifiedContact.customer_id)) == rose
    assert pending(site) == (0, 0)  # the code is spent: no destination left anywhere

    # staff identify her from another photo
    staff = {"Authorization": f"Bearer {site.staff}"}
    photo = (faces_dir / "identities/rose_leslie/2.jpg").read_bytes()
    found = httpx.post(
        f"{site.url}/api/v1/identify",
        files={"image": ("p.jpg", photo, "image/jpeg")},
        headers=staff,
        timeout=60,
    ).json()
    assert [f["customer"]["id"] for f in found["faces"]] == [rose]

    me = phone.get("/self/me")
    assert me.status_code == 200 and "rose@example.org" in me.text
    assert 'id="templates">2<' in me.text or 'id="templates">1<' in me.text
    exported = phone.get("/self/me/export")
    assert exported.status_code == 200
    assert "attachment" in exported.headers["content-disposition"]
    body = json.loads(exported.text)
    assert body["customer"]["id"] == rose and body["incentive"]["points"] == 50
    held = body["face_templates"]  # by metadata: the vector never leaves the server
    assert held and all(t["vector"] == "held for recognition; never exported" for t in held)

    csrf = re.search(r'name="csrf" value="([^"]+)"', me.text)
    assert csrf
    # without the page's form token (another site's form): refused, nothing changes
    refused = phone.post("/self/me/withdraw", data={"purpose": "in_store_recognition"})
    assert refused.status_code == 403
    done = phone.post(
        "/self/me/withdraw", data={"purpose": "in_store_recognition", "csrf": csrf.group(1)}
    )
    assert done.status_code == 303
    with site.db() as session:
        assert not session.scalars(
            select(FaceTemplate).where(FaceTemplate.customer_id == rose)
        ).all()
        (consent,) = session.scalars(select(Consent).where(Consent.customer_id == rose))
        assert consent.withdrawn_channel == "self_service"
        assert consent.withdrawn_store_id == site.store

    page = phone.get("/self/me/erase")
    assert page.status_code == 200
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token
    unconfirmed = phone.post("/self/me/erase", data={"csrf": token.group(1)})
    assert unconfirmed.status_code == 422
    old_cookie = phone.cookies.get("facecrm_self")
    erased = phone.post("/self/me/erase", data={"csrf": token.group(1), "confirm": "erase"})
    assert erased.status_code == 200 and "deleted" in erased.text
    with site.db() as session:
        assert session.get(Customer, rose) is None
        assert session.scalar(select(func.count()).select_from(VerifiedContact)) == 0
        actions = [
            e.action
            for e in session.scalars(select(AuditEvent).where(AuditEvent.customer_id == rose))
        ]
    for action in ("customer_create", "consent_give", "enroll_faces", "incentive_grant"):
        assert action in actions
    for action in ("self_view", "customer_export", "consent_withdraw", "erase"):
        assert action in actions
    # the session died with the customer, even replayed by hand
    assert phone.get("/self/me").status_code == 401
    replay = httpx.get(f"{site.url}/self/me", cookies={"facecrm_self": str(old_cookie)})
    assert replay.status_code == 401


def test_a_returning_customer_signs_in_with_a_code(
    site: Site, phone: httpx.Client, faces_dir: Path
) -> None:
    assert (
        enroll(
            phone, site, faces_dir, "+33 6 12 34 56 78", "identities/joe_biden/1.jpg", "Joe"
        ).status_code
        == 201
    )
    later = httpx.Client(base_url=site.url, timeout=60)
    form = nonce(later, site.token)
    challenge, code = ask_code(later, site, "+33612345678", form, "signin")
    assert code is not None
    # nobody's contact: the same answer, but no code and nothing stored
    stranger, nothing = ask_code(later, site, "stranger@example.org", form, "signin")
    assert nothing is None and re.fullmatch(r"[0-9a-f]{32}", stranger)
    assert pending(site) == (1, 1)
    data = {"contact": "+33612345678", "challenge": challenge, "code": code, "nonce": form}
    assert later.post(f"/self/{site.token}/signin", data=data).status_code == 200
    me = later.get("/self/me")
    assert me.status_code == 200 and "+33612345678" in me.text
    assert pending(site) == (0, 0)
    later.close()


def test_wrong_exhausted_and_expired_codes(
    site: Site, phone: httpx.Client, faces_dir: Path
) -> None:
    form = nonce(phone, site.token)
    challenge, code = ask_code(phone, site, "lou@example.org", form)
    assert code is not None
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    data = {
        "name": "Lou",
        "contact": "lou@example.org",
        "challenge": challenge,
        "text_id": str(text_id(site, "en")),
        "consent": "true",
        "nonce": form,
    }
    photo = (faces_dir / "identities/kit_harington/1.jpg").read_bytes()

    def attempt(code: str) -> httpx.Response:
        files = {"image": ("s.jpg", photo, "image/jpeg")}
        return phone.post(f"/self/{site.token}/enroll", data={**data, "code": code}, files=files)

    for n in range(selfservice.MAX_ATTEMPTS):
        refused = attempt(wrong)
        assert refused.status_code == 422 and refused.json()["reason"] == "bad_code", n
    assert pending(site) == (0, 0)  # the fifth wrong code ended the challenge
    assert attempt(code).json()["reason"] == "bad_code"  # even the right code is too late now
    with site.db() as session:
        assert (
            session.scalar(select(func.count()).select_from(Customer).where(Customer.name == "Lou"))
            == 0
        )

    # a code nobody used: gone at expiry, destination and all
    challenge, code = ask_code(phone, site, "late@example.org", form)
    assert pending(site) == (1, 1)
    with site.db() as session:
        past = utcnow() - timedelta(seconds=1)
        session.execute(update(OtpChallenge).values(expires_at=past))
        session.execute(update(OtpOutbox).values(expires_at=past))
    late = attempt(str(code))
    assert late.status_code == 422 and late.json()["reason"] == "bad_code"
    assert pending(site) == (0, 0)
    # at rest: keyed hashes only, never the code or the destination
    challenge, code = ask_code(phone, site, "hash@example.org", form)
    with site.db() as session:
        row = session.get(OtpChallenge, challenge)
        assert row is not None and re.fullmatch(r"[0-9a-f]{64}", row.code_hash)
        assert "hash@example.org" not in row.destination_key


def test_a_code_is_used_once_and_every_wrong_guess_counts_under_parallel_requests(
    site: Site, phone: httpx.Client
) -> None:
    """Six requests at the same moment with the right code: one is let in. Ten parallel
    wrong guesses: the challenge is gone after the fifth, so the right code is refused
    after them. (Unlocked, PostgreSQL let several requests use one code and lost
    attempts: more than five guesses.)"""
    service = selfservice.SelfService(site.crm, MemoryCounters())
    form = nonce(phone, site.token)

    def race(challenge: str, contact: str, codes: list[str]) -> list[bool]:
        barrier = threading.Barrier(len(codes))
        parsed = selfservice.parse_contact(contact)

        def use(code: str) -> bool:
            barrier.wait()
            try:
                service._consume(site.store, challenge, parsed, code, "enroll")
            except InvalidError:
                return False
            return True

        with ThreadPoolExecutor(len(codes)) as pool:
            return list(pool.map(use, codes))

    challenge, code = ask_code(phone, site, "race@example.org", form)
    assert code is not None
    assert race(challenge, "race@example.org", [code] * 6).count(True) == 1

    challenge, code = ask_code(phone, site, "guess@example.org", form)
    assert code is not None
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert race(challenge, "guess@example.org", [wrong] * 10) == [False] * 10
    assert race(challenge, "guess@example.org", [code]) == [False]
    with site.db() as session:
        failed = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "self_code_failed")
            .order_by(AuditEvent.id)
        ).all()
    whys = [e.detail["why"] for e in failed[-11:]]
    assert whys.count("locked") == 1 and whys.count("wrong") == selfservice.MAX_ATTEMPTS - 1


def test_rate_limits_answer_429(site: Site, phone: httpx.Client) -> None:
    form = nonce(phone, site.token)
    for _ in range(3):  # per destination: 3 an hour
        ask_code(phone, site, "busy@example.org", form)
    refused = phone.post(
        f"/self/{site.token}/code", data={"contact": "busy@example.org", "nonce": form}
    )
    assert refused.status_code == 429 and refused.json()["reason"] == "rate_limited"
    assert int(refused.headers["retry-after"]) > 0
    for n in range(4):  # per address: 8 an hour (the refused one counted), any destination
        ask_code(phone, site, f"other{n}@example.org", form)
    refused = phone.post(
        f"/self/{site.token}/code", data={"contact": "fresh@example.org", "nonce": form}
    )
    assert refused.status_code == 429
    # requests per address and minute (photo checks, enrollments, sign-ins): 12
    statuses = [
        phone.post(
            f"/self/{site.token}/check", files={"image": ("x.jpg", b"no", "image/jpeg")}
        ).status_code
        for _ in range(14)
    ]
    assert statuses[-1] == 429 and 429 not in statuses[:12]


def test_bots_are_refused(site: Site, phone: httpx.Client) -> None:
    page = phone.get(f"/self/{site.token}")
    fresh = re.search(r'data-nonce="([^"]+)"', page.text)
    assert fresh
    too_fast = phone.post(
        f"/self/{site.token}/code", data={"contact": "bot@example.org", "nonce": fresh.group(1)}
    )
    assert too_fast.status_code == 422 and too_fast.json()["reason"] == "too_fast"
    forged = jwt.encode({"typ": "self_form", "store": site.store, "iat": 0}, "guess", "HS256")
    time.sleep(FILL)
    for bad in (forged, "", fresh.group(1) + "x"):
        answer = phone.post(
            f"/self/{site.token}/code", data={"contact": "bot@example.org", "nonce": bad}
        )
        assert answer.status_code == 422 and answer.json()["reason"] == "bad_form", bad
    # a nonce of another store's page
    other = phone.post(
        f"/self/{site.other_token}/code",
        data={"contact": "bot@example.org", "nonce": fresh.group(1)},
    )
    assert other.status_code == 422 and other.json()["reason"] == "bad_form"
    assert pending(site) == (0, 0)


def test_no_customer_can_reach_another(site: Site, faces_dir: Path) -> None:
    a, b = httpx.Client(base_url=site.url, timeout=60), httpx.Client(base_url=site.url, timeout=60)
    assert (
        enroll(
            a, site, faces_dir, "ann@example.org", "identities/kit_harington/2.jpg", "Ann"
        ).status_code
        == 201
    )
    assert (
        enroll(
            b, site, faces_dir, "bob@example.org", "identities/barack_obama/1.jpg", "Bob"
        ).status_code
        == 201
    )
    with site.db() as session:
        ids = {c.name: c.id for c in session.scalars(select(Customer))}
        before = session.scalar(select(func.count()).select_from(Consent))
    ann, bob = ids["Ann"], ids["Bob"]
    me = a.get("/self/me")
    assert "ann@example.org" in me.text and "bob@example.org" not in me.text

    # ids in the URL or the query are nothing the personal page reads
    assert a.get(f"/self/me/{bob}").status_code in (404, 405)
    assert a.get(f"/self/customers/{bob}").status_code == 404
    export = a.get("/self/me/export", params={"customer_id": bob})
    assert json.loads(export.text)["customer"]["id"] == ann
    # a cookie re-signed for Bob without the server's key, or Ann's cookie edited to Bob
    claims = jwt.decode(str(a.cookies.get("facecrm_self")), options={"verify_signature": False})
    for key in ("guess", server_secret(site.crm.settings)):
        forged = jwt.encode({**claims, "sub": bob}, key, "HS256")
        assert httpx.get(f"{site.url}/self/me", cookies={"facecrm_self": forged}).status_code == 401
    # the right key but Ann's contact tag on Bob: the tag is not Bob's verified contact
    signed = jwt.encode(
        {**claims, "sub": bob}, derived_key(site.crm.settings, "self-service-session"), "HS256"
    )
    assert httpx.get(f"{site.url}/self/me", cookies={"facecrm_self": signed}).status_code == 401
    # a staff token is no personal session, and a personal session opens no staff page
    staff = httpx.get(f"{site.url}/self/me", cookies={"facecrm_self": site.staff})
    assert staff.status_code == 401
    mine = {"facecrm_self": str(a.cookies.get("facecrm_self"))}
    api = httpx.get(f"{site.url}/api/v1/customers/{bob}", cookies=mine)
    assert api.status_code == 401
    console = httpx.get(f"{site.url}/console/customers/{bob}", cookies=mine)
    assert console.status_code == 303
    # a code sent to Ann's address does not sign in as Bob
    form = nonce(a, site.token)
    challenge, code = ask_code(a, site, "ann@example.org", form, "signin")
    data = {"contact": "bob@example.org", "challenge": challenge, "code": str(code), "nonce": form}
    assert a.post(f"/self/{site.token}/signin", data=data).status_code == 422
    # and nothing changed for Bob
    with site.db() as session:
        assert session.scalar(select(func.count()).select_from(Consent)) == before
        bobs = session.get(Customer, bob)
        assert bobs is not None and bobs.email == "bob@example.org"
        assert (
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.customer_id == bob, AuditEvent.actor == "customer:self-service")
                .where(AuditEvent.action.in_(["self_view", "customer_export", "self_sign_in"]))
            )
            == 0
        )
    a.close()
    b.close()


def test_a_verified_contact_enrolls_once(site: Site, phone: httpx.Client, faces_dir: Path) -> None:
    assert (
        enroll(
            phone, site, faces_dir, "twice@example.org", "identities/lin_manuel_miranda/1.png", "T"
        ).status_code
        == 201
    )
    again = enroll(
        httpx.Client(base_url=site.url, timeout=60),
        site,
        faces_dir,
        "twice@example.org",
        "identities/barack_obama/2.jpg",
        "Other",
    )
    assert again.status_code == 409, again.text
    assert again.json()["reason"] == "contact_enrolled"
    with site.db() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(Customer).where(Customer.name == "Other")
            )
            == 0
        )


def test_the_cli_prints_the_link_and_writes_the_qr_code(
    settings: Settings, cli: Cli, tmp_path: Path
) -> None:
    assert cli(settings.data_dir, "stores", "add", "Q1", "Quai").returncode == 0
    svg = tmp_path / "door.svg"
    first = cli(
        settings.data_dir,
        "stores",
        "qr",
        "Q1",
        "--base-url",
        "https://shop.example",
        "--svg",
        str(svg),
    )
    assert first.returncode == 0, first.stderr
    url = first.stdout.splitlines()[0]
    assert re.fullmatch(r"https://shop\.example/self/[A-Za-z0-9_-]{32}", url)
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    again = cli(settings.data_dir, "stores", "qr", "Q1", "--base-url", "https://shop.example")
    assert again.stdout.splitlines()[0] == url
    rotated = cli(settings.data_dir, "stores", "qr", "Q1", "--rotate")
    assert rotated.stdout.splitlines()[0].rsplit("/", 1)[1] != url.rsplit("/", 1)[1]


def test_the_console_draws_the_stores_qr_code_for_admins(site: Site) -> None:
    def as_user(name: str) -> httpx.Response:
        login = {"username": name, "password": PASSWORD}
        token = httpx.post(f"{site.url}/api/v1/auth/token", data=login).json()["access_token"]
        path = f"{site.url}/console/stores/{site.store}/self-service.svg"
        return httpx.get(path, cookies={"facecrm_session": token}, follow_redirects=False)

    drawn = as_user("boss")
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/svg+xml"
    assert "<svg" in drawn.text
    assert as_user("alice").status_code == 403  # an associate prints no door codes
    with site.db() as session:  # the link it encodes is the store's, unchanged
        _, token = selfservice.link(session, SYSTEM, site.store)
    assert token == site.token


def test_an_administrator_reads_the_codes_waiting_for_the_embedded_sender(
    site: Site, phone: httpx.Client
) -> None:
    """`facecrm otp outbox`'s rule: the codes still waiting, newest first, or those to one
    contact as typed; an expired one is gone; audited without any destination; refused to
    staff below administrator (the destinations are in clear)."""
    form = nonce(phone, site.token)
    _, first = ask_code(phone, site, "ann@example.org", form)
    _, second = ask_code(phone, site, "+33 6 00 00 00 01", form)
    _, third = ask_code(phone, site, "bob@example.org", form)
    with site.db() as session:
        waiting = selfservice.pending_codes(session, SYSTEM)
        anns = selfservice.pending_codes(session, SYSTEM, " Ann@Example.ORG ")
    assert [c.code for c in waiting] == [third, second, first]
    assert [(c.channel, c.destination, c.code) for c in anns] == [
        ("email", "ann@example.org", first)
    ]
    with site.db() as session:  # Bob's code expires: it is not handed over
        past = utcnow() - timedelta(seconds=1)
        session.execute(
            update(OtpOutbox)
            .where(OtpOutbox.destination == "bob@example.org")
            .values(expires_at=past)
        )
    with site.db() as session:
        assert [c.code for c in selfservice.pending_codes(session, SYSTEM)] == [second, first]
    with site.db() as session:
        reads = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "otp_outbox_read").order_by(AuditEvent.id)
        ).all()
        assert [e.detail for e in reads][-3:] == [{"codes": 3}, {"codes": 1}, {"codes": 2}]
        assert not any("example.org" in json.dumps(e.detail) + e.note for e in reads)
        count = len(reads)
    manager = Principal("staff", "m", "maria", Role.MANAGER, frozenset({site.store}))
    with pytest.raises(Forbidden), site.db() as session:
        selfservice.pending_codes(session, manager)
    with pytest.raises(InvalidError), site.db() as session:
        selfservice.pending_codes(session, SYSTEM, "not a contact")
    with site.db() as session:
        assert (
            session.scalar(select(func.count()).where(AuditEvent.action == "otp_outbox_read"))
            == count
        )


def test_an_abandoned_code_is_deleted_at_expiry_without_any_request(
    site: Site, phone: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's purger deletes an expired code and its destination on its own."""
    monkeypatch.setattr(selfservice, "PURGE_SECONDS", 0.2)
    form = nonce(phone, site.token)
    ask_code(phone, site, "gone@example.org", form)
    with serve(create_app(site.crm)):  # a second server process's purger, on the same data
        with site.db() as session:
            past = utcnow() - timedelta(seconds=1)
            session.execute(update(OtpChallenge).values(expires_at=past))
            session.execute(update(OtpOutbox).values(expires_at=past))
        deadline = time.monotonic() + 10
        while pending(site) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pending(site) == (0, 0)


class RecordingSender:
    """A deployment's sender, as `FACECRM_OTP_SENDER=module:Class` names it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent: list[selfservice.OtpMessage] = []

    def send(self, session: object, message: selfservice.OtpMessage) -> None:
        self.sent.append(message)


def test_the_sender_is_pluggable(settings: Settings) -> None:
    settings.otp_sender = f"{__name__}:RecordingSender"
    assert isinstance(selfservice.sender_for(settings), RecordingSender)
    settings.otp_sender = "outbox"
    assert isinstance(selfservice.sender_for(settings), selfservice.OutboxSender)
    settings.otp_sender = "no.such.module:Sender"
    with pytest.raises(ConfigError, match="FACECRM_OTP_SENDER"):
        selfservice.sender_for(settings)


def test_language_choice() -> None:
    choose = selfservice.choose_language
    assert choose("fr-CA,fr;q=0.9,en;q=0.8", ["en", "fr"], "en") == "fr"
    assert choose("de-DE,de;q=0.9,en;q=0.5", ["en", "fr"], "fr") == "en"
    assert choose("es;q=0.1,fr;q=0.5", ["es", "fr"], "en") == "fr"
    assert choose("", ["en", "fr"], "fr") == "fr"
    assert choose("xx;q=bad, *", ["en"], "de") == "en"
