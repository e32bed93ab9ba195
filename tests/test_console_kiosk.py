"""The kiosk and the chain's consent texts in real headless Chromium: the kiosk clears
itself after an enrollment and when left idle, previews the photo, shows the French text
on a language switch, and an admin's edit of a text publishes a new version."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from browser import new_context, page_errors, wait_until
from facecrm.config import Settings
from facecrm.crm import accounts, db, enrollment
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import Consent, ConsentText, Customer, Purpose
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra (playwright)")
from playwright.sync_api import Browser, BrowserContext, Page, expect

PASSWORD = "correct horse battery"
IDLE_SECONDS = 3


@dataclass
class Site:
    url: str
    crm: FaceCRM
    store: str
    kiosk_key: str


@pytest.fixture(scope="module")
def site(module_settings: Settings, pipeline: FacePipeline) -> Iterator[Site]:
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "K", "Kiosk store", SYSTEM).id
        accounts.create_staff(session, "admin", PASSWORD, "admin", principal=SYSTEM)
        accounts.create_staff(session, "alice", PASSWORD, "associate", [store], principal=SYSTEM)
        _, key = accounts.create_device(session, store, "kiosk", "entrance", principal=SYSTEM)
        enrollment.configure(
            session,
            SYSTEM,
            store,
            {"kiosk_idle_seconds": IDLE_SECONDS, "ask_phone": True, "min_age": 16},
        )
    with serve(create_app(crm)) as url:
        yield Site(url, crm, store, key)
    crm.engine.dispose()


@pytest.fixture()
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    context = new_context(browser, site.url)
    yield context
    context.close()


@pytest.fixture()
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    errors = page_errors(page)
    yield page
    assert not errors, errors


def start_kiosk(page: Page, key: str) -> None:
    page.goto("/console/kiosk")
    expect(page).to_have_url("/console/kiosk/login")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    expect(page).to_have_url("/console/kiosk")
    expect(page.locator("#welcome")).to_be_visible()


def consents_of(crm: FaceCRM, name: str) -> list[Consent]:
    with crm.sessions() as session:
        query = select(Consent).join(Customer).where(Customer.name == name)
        found = list(session.scalars(query))
        for consent in found:
            session.expunge(consent)
        return found


def test_the_kiosk_clears_everything_after_an_enrollment(
    page: Page, site: Site, faces_dir: Path
) -> None:
    start_kiosk(page, site.kiosk_key)
    expect(page.locator("header nav")).to_have_count(0)  # no navigation
    page.click("#begin")
    form = page.locator("#enroll")
    expect(form).to_be_visible()
    page.fill("input[name=name]", "Kit Harington")
    page.fill("input[name=email]", "kit@example.com")
    page.fill("input[name=phone]", "+33 6 12 34 56 78")  # the store asks for it
    page.check("input[name=consent]")
    page.check("input[name=show_photo]")
    # the store asks for a minimum age: without the box the server refuses
    page.set_input_files("#upload", str(faces_dir / "identities/kit_harington/2.jpg"))
    expect(page.locator("#preview-box")).to_be_visible()  # the photo is previewed first
    assert page.evaluate("document.getElementById('preview').width") > 0
    page.evaluate("document.querySelector('input[name=age_confirmed]').required = false")
    page.click("#submit")
    expect(page.locator("#result")).to_contain_text("age_not_confirmed")
    assert consents_of(site.crm, "Kit Harington") == []
    page.check("input[name=age_confirmed]")
    page.click("#submit")
    expect(page.locator("#welcome")).to_be_visible()
    expect(page.locator("#thanks")).to_contain_text("Thank you")
    expect(form).to_be_hidden()
    (consent,) = consents_of(site.crm, "Kit Harington")
    assert (consent.channel, consent.store_id, consent.witness) == (
        "kiosk",
        site.store,
        "device:entrance",
    )
    assert consent.age_confirmed == 16
    # every field, the photo and the consent boxes are cleared for the next customer
    page.click("#begin")
    for field in ("name", "email", "phone"):
        expect(page.locator(f"input[name={field}]")).to_have_value("")
    for box in ("consent", "show_photo", "age_confirmed"):
        expect(page.locator(f"input[name={box}]")).not_to_be_checked()
    assert page.evaluate("document.getElementById('upload').files.length") == 0
    expect(page.locator("#preview-box")).to_be_hidden()
    assert page.evaluate("document.getElementById('preview').width") == 0
    expect(page.locator("#photo-state")).to_have_text("No photo yet.")
    # a kiosk browser reaches no other page
    for path in ("/console/customers", "/console/login", "/console/enroll"):
        page.goto(path)
        expect(page).to_have_url("/console/kiosk")


def test_the_camera_photo_is_previewed_and_an_idle_kiosk_resets(page: Page, site: Site) -> None:
    start_kiosk(page, site.kiosk_key)
    page.click("#begin")
    page.fill("input[name=name]", "Someone Walking Away")
    page.check("input[name=consent]")
    page.click("#start-camera")
    expect(page.locator("#take-photo")).to_be_enabled()
    wait_until(page, "document.getElementById('video').videoWidth > 0")
    page.click("#take-photo")
    expect(page.locator("#preview-box")).to_be_visible()
    assert page.evaluate("document.getElementById('preview').width") == 640
    # nothing touched for IDLE_SECONDS: back to the welcome screen, everything cleared
    expect(page.locator("#welcome")).to_be_visible(timeout=(IDLE_SECONDS + 5) * 1000)
    expect(page.locator("#enroll")).to_be_hidden()
    page.click("#begin")
    expect(page.locator("input[name=name]")).to_have_value("")
    expect(page.locator("input[name=consent]")).not_to_be_checked()
    expect(page.locator("#preview-box")).to_be_hidden()
    assert page.evaluate("document.getElementById('video').srcObject") is None


def test_the_language_switch_shows_and_records_the_french_text(
    page: Page, site: Site, faces_dir: Path
) -> None:
    start_kiosk(page, site.kiosk_key)
    page.click("#begin")
    english = page.locator(".consent-text[data-language=en]")
    french = page.locator(".consent-text[data-language=fr]")
    expect(english).to_be_visible()
    expect(french).to_be_hidden()
    page.select_option("#language", "fr")
    expect(french).to_be_visible()
    expect(french).to_contain_text("reconnaissent mon visage")
    expect(english).to_be_hidden()
    page.fill("input[name=name]", "Rose Leslie")
    page.check("input[name=consent]")
    page.check("input[name=age_confirmed]")
    page.set_input_files("#upload", str(faces_dir / "identities/rose_leslie/1.jpg"))
    page.click("#submit")
    expect(page.locator("#thanks")).to_contain_text("Thank you")
    (consent,) = consents_of(site.crm, "Rose Leslie")
    with site.crm.sessions() as session:
        shown = session.get(ConsentText, consent.text_id)
        assert shown is not None and (shown.language, shown.version) == ("fr", CURRENT)
    # after the reset the kiosk is back in the store's language
    page.click("#begin")
    expect(page.locator(".consent-text[data-language=en]")).to_be_visible()


def test_an_admin_edit_publishes_a_new_version(page: Page, site: Site) -> None:
    page.goto("/console/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.click("header nav >> text=Consent texts")
    rows = page.locator("#texts tbody tr")
    expect(rows).to_have_count(3)  # recognition in en and fr, face payment in en (0019)
    page.click("#texts tr[class=active]:has(td:text-is('fr')) a.edit")
    editor = page.locator("textarea[name=body]")
    expect(editor).to_contain_text("reconnaissent mon visage")
    editor.fill("J'accepte la reconnaissance faciale en magasin (texte révisé).")
    page.fill("input[name=version]", "2026-12-v2")
    page.click("#edit-text button[type=submit]")
    expect(page).to_have_url("/console/consent-texts")
    expect(rows).to_have_count(4)
    fr = page.locator("#texts tbody tr:has(td:text-is('fr'))")
    expect(fr.locator(".version")).to_have_text(["2026-12-v2", CURRENT])
    expect(fr.locator(".state")).to_have_text(["shown now", "replaced"])
    with site.crm.sessions() as session:
        versions = session.scalars(
            select(ConsentText).where(
                ConsentText.purpose == Purpose.IN_STORE_RECOGNITION, ConsentText.language == "fr"
            )
        ).all()
        by_version = {t.version: t for t in versions}
        assert by_version[CURRENT].active is False
        assert "reconnaissent mon visage" in by_version[CURRENT].body  # never edited
        assert by_version["2026-12-v2"].active and by_version["2026-12-v2"].created_by == (
            "staff:admin"
        )
    # the enrollment form now shows the new French version
    page.goto("/console/enroll")
    page.select_option("#language", "fr")
    expect(page.locator(".consent-text[data-language=fr]")).to_contain_text("texte révisé")
    # an associate sees the texts but cannot edit them
    page.click("header button[type=submit]")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    response = page.goto("/console/consent-texts/edit?purpose=marketing&language=en")
    assert response is not None and response.status == 403
