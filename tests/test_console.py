"""The staff console in real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from browser import new_context, wait_until
from facecrm.config import Settings
from facecrm.crm import accounts, activity, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import Customer, FaceTemplate
from facecrm.crm.service import FaceCRM, Photo
from facecrm.server import create_app
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline

from server import serve

pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra (playwright)")
from playwright.sync_api import Browser, Page, expect

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def site(
    module_settings: Settings, pipeline: FacePipeline, faces_dir: Path
) -> Iterator[tuple[str, FaceCRM]]:
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "Store A", SYSTEM)
        accounts.create_staff(session, "alice", PASSWORD, "associate", [store.id], principal=SYSTEM)
        store_id = store.id
    rose = crm.enroll(
        "Rose Leslie",
        [Photo("seed", read_image(faces_dir / "identities/rose_leslie/1.jpg", crm.settings))],
        CURRENT,
        "kiosk",
        SYSTEM,
        profile={"tier": "vip", "show_photo": True},
    )
    with db.transaction(crm.sessions) as session:
        activity.add_interest(session, SYSTEM, rose.id, store_id, "Red boots 38", out_of_stock=True)
    with serve(create_app(crm)) as url:
        yield url, crm
    crm.engine.dispose()


@pytest.fixture()
def page(browser: Browser, site: tuple[str, FaceCRM]) -> Iterator[Page]:
    context = new_context(browser, site[0])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


def log_in(page: Page, password: str = PASSWORD) -> None:
    page.goto("/console/customers")
    expect(page).to_have_url("/console/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def count(crm: FaceCRM, model: type) -> int:
    """Rows of `model`; for templates, the enrolled photos (each stores one per model)."""
    with crm.sessions() as session:
        query = select(func.count()).select_from(model)
        if model is FaceTemplate:
            query = query.where(FaceTemplate.model_id == crm.model_id)
        return int(session.scalar(query) or 0)


def test_wrong_password(page: Page) -> None:
    log_in(page, "not the password")
    expect(page.get_by_role("alert")).to_contain_text("Wrong username or password")


def test_search_and_card(page: Page) -> None:
    log_in(page)
    expect(page.locator("h1")).to_have_text("Customers")
    page.fill("input[name=q]", "rose")
    page.click("form.search button")
    page.click("text=Rose Leslie")
    card = page.locator("#customer-card")
    expect(card).to_contain_text("Rose Leslie")
    expect(card.locator(".tier")).to_have_text("vip")
    expect(page.locator("#interests")).to_contain_text("Red boots 38 (was out of stock)")
    photo = card.locator("img.photo")
    expect(photo).to_be_visible()
    assert page.evaluate("img => img.naturalWidth", photo.element_handle()) > 0


def test_enroll_with_the_camera(page: Page, site: tuple[str, FaceCRM]) -> None:
    crm = site[1]
    before = count(crm, FaceTemplate)
    log_in(page)
    page.goto("/console/enroll")
    expect(page.locator(".consent-text[data-language=en]")).to_contain_text("recognise my face")
    page.fill("input[name=name]", "Kit Harington")
    page.check("input[name=consent]")
    page.click("#start-camera")
    expect(page.locator("#take-photo")).to_be_enabled()
    wait_until(page, "document.getElementById('video').videoWidth > 0")
    page.click("#take-photo")
    expect(page.locator("#photo-state")).to_contain_text("Photo taken")
    page.click("#submit")
    expect(page.locator("#result")).to_contain_text("Enrolled")
    page.click("#result a")
    expect(page.locator("#customer-card")).to_contain_text("Kit Harington")
    expect(page.locator("#customer-card")).to_contain_text("in_store_recognition (2026-11-v1)")
    assert count(crm, FaceTemplate) == before + 1


def test_enroll_rejects_a_group_photo(
    page: Page, site: tuple[str, FaceCRM], faces_dir: Path
) -> None:
    crm = site[1]
    before = (count(crm, Customer), count(crm, FaceTemplate))
    log_in(page)
    page.goto("/console/enroll")
    page.fill("input[name=name]", "Two People")
    page.check("input[name=consent]")
    page.set_input_files("#upload", str(faces_dir / "scenes/two_people.jpg"))
    page.click("#submit")
    expect(page.locator("#result")).to_contain_text("more than one face")
    expect(page.locator("#result")).to_contain_text("multiple_faces")
    assert (count(crm, Customer), count(crm, FaceTemplate)) == before


def test_pages_need_a_login(page: Page) -> None:
    page.goto("/console/enroll")
    expect(page).to_have_url("/console/login")
