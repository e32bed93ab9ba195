"""The console's enrollment-options page in real headless Chromium, on SQLite and PostgreSQL.

An administrator sets the chain's defaults and a store's overrides; the kiosk of that store
then asks for what was set (phone, tier, the minimum-age box). A refused value is shown
with its reason and changes nothing; a manager sees and edits only their own store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from facecrm.config import Settings
from facecrm.crm import accounts, db, enrollment
from facecrm.crm.authz import SYSTEM
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra (playwright)")
from playwright.sync_api import Browser, Page, expect

PASSWORD = "correct horse battery"


@dataclass
class Site:
    url: str
    crm: FaceCRM
    par: str
    lyo: str
    kiosk_key: str

    def options(self, store: str | None) -> enrollment.Options:
        with db.transaction(self.crm.sessions) as session:
            return enrollment.effective(session, store)


@pytest.fixture(scope="module")
def site(module_settings: Settings, pipeline: FacePipeline) -> Iterator[Site]:
    module_settings.login_known_address_days = 0
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        par = accounts.create_store(session, "PAR1", "Paris Rivoli", SYSTEM).id
        lyo = accounts.create_store(session, "LYO1", "Lyon Part-Dieu", SYSTEM).id
        accounts.create_staff(session, "root", PASSWORD, "admin", principal=SYSTEM)
        accounts.create_staff(session, "leo", PASSWORD, "manager", [lyo], principal=SYSTEM)
        _, key = accounts.create_device(session, par, "kiosk", principal=SYSTEM)
    with serve(create_app(crm)) as url:
        yield Site(url, crm, par, lyo, key)
    crm.engine.dispose()


def open_as(browser: Browser, site: Site, username: str) -> Page:
    page = browser.new_context(base_url=site.url).new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda e: pytest.fail(f"script error: {e}"))
    page.goto("/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("#login button[type=submit]")
    expect(page.locator("header .who")).to_contain_text(username)
    return page


def test_the_administrator_sets_the_chain_and_a_store_and_the_kiosk_asks_for_it(
    browser: Browser, site: Site
) -> None:
    page = open_as(browser, site, "root")
    page.click("header nav >> text=Enrollment")
    rows = page.locator("#enrollment-options tbody tr")
    expect(rows).to_have_count(3)  # the chain, PAR1, LYO1

    page.click("text=Edit Chain")
    page.get_by_label("Ask for a phone number").select_option("yes")
    page.get_by_label("Minimum age to confirm").fill("18")
    page.click("text=Save options")
    expect(page.locator("#notice")).to_have_text("Enrollment options saved.")
    expect(page.locator("#in-force tr[data-option=min_age] td")).to_have_text("18")

    page.goto(f"/console/enrollment-options/{site.par}")
    # a store inherits the chain's values until it sets its own
    expect(page.get_by_label("Ask for a phone number")).to_contain_text("inherit (yes)")
    page.get_by_label("Ask for a tier").select_option("yes")
    page.get_by_label("Kiosk idle reset, seconds").fill("30")
    page.click("text=Save options")
    expect(page.locator("#notice")).to_be_visible()
    assert site.options(site.par) == enrollment.Options("en", True, True, 18, 30)
    assert site.options(site.lyo) == enrollment.Options("en", True, False, 18, 60)

    kiosk = browser.new_context(base_url=site.url).new_page()
    kiosk.goto("/console/kiosk")
    kiosk.fill("input[name=key]", site.kiosk_key)
    kiosk.click("text=Start the kiosk")
    kiosk.click("#begin")
    expect(kiosk.locator("input[name=phone]")).to_be_visible()
    expect(kiosk.locator("select[name=tier]")).to_be_visible()
    expect(kiosk.get_by_text("I am at least 18 years old.")).to_be_visible()
    assert kiosk.locator("#enroll").get_attribute("data-idle-seconds") == "30"
    kiosk.context.close()

    # back to "inherit": the store follows the chain again
    page.goto(f"/console/enrollment-options/{site.par}")
    page.get_by_label("Ask for a tier").select_option("")
    page.click("text=Save options")
    expect(page.locator("#in-force tr[data-option=ask_tier] td")).to_have_text("not asked")
    page.context.close()


def test_a_refused_value_is_shown_with_its_reason_and_changes_nothing(
    browser: Browser, site: Site
) -> None:
    page = open_as(browser, site, "root")
    page.goto(f"/console/enrollment-options/{site.par}")
    before = site.options(site.par)
    csrf = page.locator("#options input[name=csrf]").input_value()
    for field, value, reason in (
        ("min_age", "30", "min_age is a whole number from 0 to 21"),
        ("kiosk_idle_seconds", "soon", "kiosk_idle_seconds is a whole number from 2 to 3600"),
        ("language", "not a language!", "a language is a code like en"),
        ("ask_phone", "maybe", "ask_phone is true or false"),
    ):
        answer = page.request.post(
            f"/console/enrollment-options/{site.par}",
            form={"csrf": csrf, "ask_tier": "no", field: value},
        )
        assert answer.status == 422, (field, answer.status)
        assert reason in answer.text()
        assert site.options(site.par) == before  # not even the valid ask_tier was written
    page.context.close()


def test_a_manager_edits_only_their_own_store(browser: Browser, site: Site) -> None:
    page = open_as(browser, site, "leo")
    page.goto("/console/enrollment-options")
    rows = page.locator("#enrollment-options tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-scope", site.lyo)
    page.click("text=Edit LYO1")
    page.get_by_label("Consent text shown first").select_option("fr")
    page.click("text=Save options")
    expect(page.locator("#in-force tr[data-option=language] td")).to_have_text("fr")
    assert site.options(site.lyo).language == "fr"

    before = site.options(site.par)
    assert page.goto(f"/console/enrollment-options/{site.par}").status == 403  # type: ignore[union-attr]
    csrf = page.context.cookies()
    token = next(c["value"] for c in csrf if "csrf" in c["name"])
    for scope in (site.par, "chain"):
        answer = page.request.post(
            f"/console/enrollment-options/{scope}", form={"csrf": token, "min_age": "21"}
        )
        assert answer.status == 403, (scope, answer.status)  # the chain's too (was 422)
    assert site.options(site.par) == before
    assert site.options(None).min_age == 18
    page.context.close()
