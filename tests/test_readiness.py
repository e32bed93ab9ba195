"""A store's set-up check: the API, enforcement on identification and the agent gallery,
and the console's banner and confirm buttons in real Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import select

from browser import log_in, new_context
from facecrm.crm import accounts, consent_text, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import AuditEvent, Purpose
from facecrm.crm.service import FaceCRM, Photo
from facecrm.server import create_app

from server import serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser

PASSWORD = "correct horse battery"


@dataclass
class Site:
    url: str
    crm: FaceCRM
    store: str
    other: str
    agent_key: str
    tokens: dict[str, str]

    def client(self, who: str) -> httpx.Client:
        headers = (
            {"X-API-Key": self.agent_key}
            if who == "agent"
            else {"Authorization": f"Bearer {self.tokens[who]}"}
        )
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=60)


@pytest.fixture()
def site(crm: FaceCRM, faces_dir: Path) -> Iterator[Site]:
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "PAR1", "Paris Rivoli", SYSTEM).id
        other = accounts.create_store(session, "LYO1", "Lyon", SYSTEM).id
        accounts.create_staff(session, "root", PASSWORD, "admin", [], principal=SYSTEM)
        accounts.create_staff(session, "alice", PASSWORD, "associate", [store], principal=SYSTEM)
        accounts.create_staff(session, "bob", PASSWORD, "associate", [other], principal=SYSTEM)
        _, key = accounts.create_device(session, store, "agent", principal=SYSTEM)
    photo = faces_dir / "identities/rose_leslie/1.jpg"
    from facecrm.vision.image import read_image

    crm.enroll("Rose", [Photo("p", read_image(photo, crm.settings))], CURRENT, "kiosk", SYSTEM)
    with serve(create_app(crm)) as url:
        tokens = {
            name: httpx.post(
                f"{url}/api/v1/auth/token", data={"username": name, "password": PASSWORD}
            ).json()["access_token"]
            for name in ("root", "alice", "bob")
        }
        yield Site(url, crm, store, other, key, tokens)


def _confirm_all(site: Site) -> dict[str, object]:
    with site.client("root") as api:
        for item in ("signage", "consent_text", "retention"):
            r = api.post(f"/stores/{site.store}/readiness/{item}")
            assert r.status_code == 200, r.text
        return dict(r.json())


def test_readiness_api(site: Site) -> None:
    with site.client("alice") as api:
        r = api.get(f"/stores/{site.store}/readiness")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["ready"], body["enforced"]) == (False, False)
        assert [i["item"] for i in body["items"] if not i["confirmed"]] == [
            "signage",
            "consent_text",
            "retention",
        ]
        expected = {i["item"]: i["expected"] for i in body["items"]}["consent_text"]
        assert expected.startswith(f"{CURRENT} (en, text #")
        refused = api.post(f"/stores/{site.store}/readiness/signage")  # admins only
        assert refused.status_code == 403
    with site.client("bob") as api:  # another store's associate
        assert api.get(f"/stores/{site.store}/readiness").status_code == 403
    with site.client("root") as api:
        assert api.post(f"/stores/{site.store}/readiness/coffee").status_code == 422
        assert api.get("/stores/nope/readiness").status_code == 404
    done = _confirm_all(site)
    assert done["ready"] is True
    with site.crm.sessions() as session:
        confirmed = session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "readiness_confirm")
        ).all()
    assert [d["item"] for d in confirmed] == ["signage", "consent_text", "retention"]
    # a retention setting changes: the store must be confirmed again
    site.crm.settings.retain_visits_days = 90
    with site.client("alice") as api:
        body = api.get(f"/stores/{site.store}/readiness").json()
    retention = next(i for i in body["items"] if i["item"] == "retention")
    assert body["ready"] is False and retention["confirmed"] is False
    assert retention["confirmed_value"].startswith("visits 365d")
    assert retention["expected"].startswith("visits 90d")
    # the chain publishes a new consent text: the store must confirm the text again
    site.crm.settings.retain_visits_days = 365
    with db.transaction(site.crm.sessions) as session:
        new = consent_text.create_version(session, SYSTEM, Purpose.IN_STORE_RECOGNITION, "en", "v2")
    with site.client("alice") as api:
        body = api.get(f"/stores/{site.store}/readiness").json()
    text = next(i for i in body["items"] if i["item"] == "consent_text")
    assert body["ready"] is False and text["confirmed"] is False
    assert text["expected"].endswith(f"text #{new.id})")


def test_required_readiness_switches_recognition_off(site: Site, faces_dir: Path) -> None:
    site.crm.settings.require_store_readiness = True
    photo = (faces_dir / "identities/rose_leslie/2.jpg").read_bytes()
    with site.client("alice") as api:
        r = api.post("/identify", files={"image": ("r.jpg", photo, "image/jpeg")})
        assert r.status_code == 409, r.text
        assert r.json()["reason"] == "store_not_ready"
    with site.client("agent") as agent:
        paused = agent.get("/agent/gallery")
        assert paused.status_code == 200 and paused.json()["templates"] == []
    with site.client("bob") as api:  # nothing confirmed in Lyon either
        r = api.post("/identify", files={"image": ("r.jpg", photo, "image/jpeg")})
        assert r.status_code == 409
    _confirm_all(site)
    with site.client("agent") as agent:  # the old ETag no longer holds: a full gallery
        full = agent.get("/agent/gallery", headers={"If-None-Match": paused.headers["ETag"]})
        assert full.status_code == 200 and len(full.json()["templates"]) == 1
    with site.client("alice") as api:
        r = api.post("/identify", files={"image": ("r.jpg", photo, "image/jpeg")})
        assert r.status_code == 200, r.text
        assert r.json()["faces"][0]["customer"]["name"] == "Rose"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_console_banner_and_confirmation(site: Site, browser: Browser) -> None:
    from playwright.sync_api import expect

    context = new_context(browser, site.url)
    alice = context.new_page()
    log_in(alice, "alice", PASSWORD)
    expect(alice).to_have_url("/console/customers")
    banner = alice.locator("#readiness-banner")
    expect(banner).to_contain_text("Not ready for face recognition: PAR1")
    expect(banner).not_to_contain_text("LYO1")  # not one of her stores
    alice.goto(f"/console/stores/{site.store}/readiness")
    expect(alice.locator("#state")).to_contain_text("Not ready")
    expect(alice.get_by_role("button", name="Confirm")).to_have_count(0)  # admins only
    context.close()

    context = new_context(browser, site.url)
    root = context.new_page()
    log_in(root, "root", PASSWORD)
    root.goto("/console/readiness")
    expect(root.locator("#readiness-banner")).to_contain_text("LYO1, PAR1")
    root.get_by_role("link", name="PAR1").click()
    for item in ("signage", "consent_text", "retention"):
        root.locator(f"#item-{item} button").click()
        expect(root.locator(f"#item-{item}")).to_contain_text("confirmed by staff:root")
    expect(root.locator("#state")).to_contain_text("Ready")
    expect(root.locator("#readiness-banner")).to_contain_text("LYO1")
    expect(root.locator("#readiness-banner")).not_to_contain_text("PAR1")
    context.close()

    context = new_context(browser, site.url)
    alice = context.new_page()
    log_in(alice, "alice", PASSWORD)
    expect(alice).to_have_url("/console/customers")
    expect(alice.locator("#readiness-banner")).to_have_count(0)
    context.close()


def test_a_new_operating_point_makes_agents_fetch_the_gallery_again(site: Site) -> None:
    """The ETag covers what agents decide with, not only the templates: a server restarted
    with another target FMR or calibration is not answered 304 by an old gallery."""
    _confirm_all(site)
    fmr = site.crm.settings.target_fmr
    with site.client("agent") as agent:
        first = agent.get("/agent/gallery")
        etag = {"If-None-Match": first.headers["ETag"]}
        assert agent.get("/agent/gallery", headers=etag).status_code == 304
        try:
            site.crm.settings.target_fmr = fmr / 10
            again = agent.get("/agent/gallery", headers=etag)
        finally:
            site.crm.settings.target_fmr = fmr
        assert again.status_code == 200 and again.json()["target_fmr"] == fmr / 10
        assert again.headers["ETag"] != first.headers["ETag"]
