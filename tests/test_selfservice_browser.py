"""Self-enrollment in real headless Chromium on a phone-sized screen (390x844, touch): the
QR link opens the page in the phone's language with the incentive, a selfie chosen on the
`capture=user` input gets live quality feedback, the code comes from the outbox, and the
customer lands on their personal page; they download their data and erase everything,
after which the session is dead. Both databases."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from browser import browser_with_camera, page_errors
from facecrm.config import Settings
from facecrm.crm import accounts, consent_text, db, selfservice
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import Consent, Customer, OtpOutbox, Purpose
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline

from server import serve

pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra (playwright)")
from playwright.sync_api import Browser, Page, expect

PHONE = {"width": 390, "height": 844}


@dataclass
class Site:
    url: str
    crm: FaceCRM
    store: str
    token: str


@pytest.fixture(scope="module")
def site(module_settings: Settings, pipeline: FacePipeline) -> Iterator[Site]:
    module_settings.self_incentive_text = "Un café offert"
    module_settings.self_incentive_points = 20
    module_settings.self_min_fill_seconds = 1.0
    crm = FaceCRM(module_settings, pipeline=pipeline, migrate=True)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "P", "Opéra", SYSTEM).id
        _, token = selfservice.link(session, SYSTEM, store)
    with serve(create_app(crm)) as url:
        yield Site(url, crm, store, token)
    crm.engine.dispose()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[Browser]:
    photo = faces_dir / "identities/rose_leslie/1.jpg"  # the fake camera (unused here)
    with browser_with_camera(photo, tmp_path_factory.mktemp("camera")) as launched:
        yield launched


@pytest.fixture()
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(
        base_url=site.url,
        viewport=PHONE,
        is_mobile=True,
        has_touch=True,
        locale="fr-FR",
        accept_downloads=True,
    )
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors = page_errors(page)
    yield page
    context.close()
    assert not errors, errors


def outbox_code(crm: FaceCRM) -> str:
    with crm.sessions() as session:
        body = session.scalar(select(OtpOutbox.body).order_by(OtpOutbox.id.desc()))
    found = re.search(r"\b\d{6}\b", str(body))
    assert found, body
    return found.group(0)


def test_a_customer_enrolls_on_their_phone_and_erases_it_all(
    page: Page, site: Site, faces_dir: Path, tmp_path: Path
) -> None:
    page.goto(f"/self/{site.token}")  # what the QR code at the door opens
    assert page.evaluate("document.documentElement.lang") == "fr"
    with site.crm.sessions() as session:
        french = consent_text.active_for(session, Purpose.IN_STORE_RECOGNITION, "fr")
        assert french is not None
        french_id = french.id
    expect(page.locator(f'.consent-text[data-text-id="{french_id}"]')).to_be_visible()
    expect(page.locator("#incentive")).to_contain_text("Un café offert")
    # one column on the phone: nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    page.fill("#name", "Rose Leslie")
    page.check("#consent")
    # live feedback: two people are refused before anything is sent
    page.set_input_files("#selfie", str(faces_dir / "scenes/two_people.jpg"))
    expect(page.locator("#quality")).to_have_class("error")
    expect(page.locator("#quality")).to_contain_text("more than one face")
    page.set_input_files("#selfie", str(faces_dir / "identities/rose_leslie/1.jpg"))
    expect(page.locator("#quality")).to_have_class("ok")
    assert page.evaluate("document.getElementById('preview').width") > 0
    expect(page.locator("#submit")).to_be_disabled()  # no code yet

    page.fill("#contact", "rose@example.org")
    # a person takes longer than the bot threshold (self_min_fill_seconds = 1 here); on an
    # idle machine the steps above take less, and the form would rightly be refused
    page.wait_for_timeout(1_100)
    page.click("#send-code")
    expect(page.locator("#code-state")).to_have_class("ok")
    page.fill("#code", outbox_code(site.crm))
    page.click("#submit")
    expect(page).to_have_url(re.compile(r"/self/me$"))
    expect(page.locator("#email")).to_have_text("rose@example.org")
    expect(page.locator("#incentive")).to_contain_text("20 points")

    with site.crm.sessions() as session:
        customer = session.scalar(select(Customer).where(Customer.name == "Rose Leslie"))
        assert customer is not None
        rose = customer.id
        consent = session.scalar(select(Consent).where(Consent.customer_id == rose))
        assert consent is not None
        assert (consent.channel, consent.store_id, consent.text_id) == (
            "self_service",
            site.store,
            french_id,
        )
    # staff recognise her from another photo
    probe = read_image(faces_dir / "identities/rose_leslie/2.jpg", site.crm.settings)
    (face,) = site.crm.identify(probe, SYSTEM, site.store)
    assert face.match is not None and face.match.customer_id == rose

    with page.expect_download() as download:
        page.click("#export")
    saved = tmp_path / "mine.json"
    download.value.save_as(saved)
    exported = json.loads(saved.read_text())
    assert exported["customer"]["id"] == rose and exported["incentive"]["points"] == 20

    page.click("#erase")
    page.check("#confirm")
    page.click("#erase-now")
    expect(page.locator("#done")).to_contain_text("Erased")
    with site.crm.sessions() as session:
        assert session.get(Customer, rose) is None
    page.goto("/self/me")
    expect(page.locator("#login-required")).to_be_visible()
