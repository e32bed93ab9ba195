"""The admin and manager pages in real headless Chromium, on SQLite and PostgreSQL.

One pilot's set-up, in order: an administrator creates stores and a store manager; the
manager creates an associate of their store, resets the associate's password, unlocks
the account after log-in throttling, creates, re-keys and revokes a device, edits the
store's rules, and sets the webhook (a local receiver), rotates its secret and sees a
test delivery in the log. Then what the manager must not reach: another store's rules,
devices and staff. Every page is checked for CSP violations and script errors.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import select

from browser import headless_chromium
from facecrm.alerts import storeconfig, webhooks
from facecrm.config import Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import Device, StaffUser
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline
from receiver import Receiver

from server import serve

pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra (playwright)")
from playwright.sync_api import Browser, Locator, Page, expect

PASSWORD = "correct horse battery"
RECORD_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) => {
  const seen = JSON.parse(sessionStorage.getItem("csp") || "[]");
  seen.push(e.violatedDirective + " " + e.blockedURI);
  sessionStorage.setItem("csp", JSON.stringify(seen));
});"""


@dataclass
class Site:
    url: str
    crm: FaceCRM
    hook: Receiver
    ids: dict[str, str] = field(default_factory=dict)

    def api_login(self, username: str, password: str) -> int:
        r = httpx.post(
            f"{self.url}/api/v1/auth/token", data={"username": username, "password": password}
        )
        return r.status_code


@pytest.fixture(scope="module")
def site(module_settings: Settings, pipeline: FacePipeline) -> Iterator[Site]:
    module_settings.login_free_failures = 1
    module_settings.login_backoff_seconds = 600
    module_settings.login_known_address_days = 0  # every test's log-ins come from 127.0.0.1
    module_settings.webhook_allow_hosts = ["127.0.0.1"]
    module_settings.webhook_allow_http = True
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        accounts.create_staff(session, "root", PASSWORD, "admin", principal=SYSTEM)
    hook = Receiver()
    with serve(create_app(crm)) as url:
        yield Site(url, crm, hook)
    hook.server.shutdown()
    crm.engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with headless_chromium() as launched:
        yield launched


Checked = tuple[Browser, list[str]]


@pytest.fixture(scope="module")
def checked(browser: Browser, site: Site) -> Iterator[Checked]:
    """Every page's script errors and CSP reports, asserted empty at the end."""
    errors: list[str] = []
    yield browser, errors
    assert not errors, errors


def open_as(checked: Checked, site: Site, username: str, password: str) -> Page:
    browser, errors = checked
    context = browser.new_context(base_url=site.url)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.add_init_script(RECORD_VIOLATIONS)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.goto("/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#login button[type=submit]")
    expect(page.locator("header .who")).to_contain_text(username)
    return page


def no_violations(page: Page) -> None:
    assert page.evaluate("JSON.parse(sessionStorage.getItem('csp') || '[]')") == []


def staff_row(page: Page, username: str) -> Locator:
    return page.locator(f"#staff tr[data-username={username}]")


def test_the_administrator_creates_stores_and_a_manager(checked: Checked, site: Site) -> None:
    page = open_as(checked, site, "root", PASSWORD)
    response = page.goto("/console/stores")
    assert (
        response is not None and "script-src 'self'" in response.headers["content-security-policy"]
    )
    for code, name in (("PAR1", "Paris Rivoli"), ("LYO1", "Lyon Part-Dieu")):
        page.fill("#new-store input[name=code]", code)
        page.fill("#new-store input[name=name]", name)
        page.click("#new-store button")
        expect(page.locator("#notice")).to_have_text(f"Store {code} created.")
    rows = page.locator("#stores tbody tr")
    expect(rows).to_have_count(2)
    site.ids["PAR1"] = rows.nth(1).locator("td").nth(2).inner_text().strip()
    site.ids["LYO1"] = rows.nth(0).locator("td").nth(2).inner_text().strip()
    # a second PAR1 is refused on the page (409), not a 500, and nothing is added
    page.fill("#new-store input[name=code]", "PAR1")
    page.fill("#new-store input[name=name]", "again")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("#new-store button")
    assert posted.value.status == 409
    expect(page.locator("#error")).to_contain_text("exists")
    expect(rows).to_have_count(2)

    page.goto("/console/staff")
    for username, role, store in (("maria", "manager", "PAR1"), ("leo", "manager", "LYO1")):
        form = page.locator("#new-staff")
        form.locator("input[name=username]").fill(username)
        form.locator("input[name=password]").fill(PASSWORD)
        form.locator("select[name=role]").select_option(role)
        form.locator(f"input[name=store_ids][value='{site.ids[store]}']").check()
        form.locator("button[type=submit]").click()
        expect(page.locator("#notice")).to_have_text(f"Account {username} created.")
        expect(staff_row(page, username).locator(".stores")).to_have_text(store)
    # a short password is a form error
    form = page.locator("#new-staff")
    form.locator("input[name=username]").fill("shorty")
    form.locator("input[name=password]").fill("short")
    form.locator("button[type=submit]").click()
    expect(page.locator("#error")).to_contain_text("at least 8 characters")
    expect(staff_row(page, "shorty")).to_have_count(0)
    no_violations(page)
    page.context.close()
    with db.transaction(site.crm.sessions) as session:  # Lyon's own associate and device
        accounts.create_staff(
            session, "lou", PASSWORD, "associate", [site.ids["LYO1"]], principal=SYSTEM
        )
        device, _ = accounts.create_device(
            session, site.ids["LYO1"], "agent", "lyon door", principal=SYSTEM
        )
        site.ids["lyon door"] = device.id


def test_the_manager_manages_an_associate_of_their_store(checked: Checked, site: Site) -> None:
    page = open_as(checked, site, "maria", PASSWORD)
    page.click("header nav >> text=Staff")
    expect(page.locator("h1")).to_have_text("Staff")
    expect(staff_row(page, "lou")).to_have_count(0)  # Lyon's associate is not shown
    expect(staff_row(page, "leo")).to_have_count(0)
    form = page.locator("#new-staff")
    expect(form.locator("select[name=role] option")).to_have_count(1)  # associates only
    expect(form.locator("input[name=store_ids]")).to_have_count(1)  # own store only
    form.locator("input[name=username]").fill("sam")
    form.locator("input[name=display_name]").fill("Sam Sales")
    form.locator("input[name=password]").fill(PASSWORD)
    form.locator("input[name=store_ids]").check()
    form.locator("button[type=submit]").click()
    expect(page.locator("#notice")).to_have_text("Account sam created.")
    expect(staff_row(page, "sam").locator(".stores")).to_have_text("PAR1")
    # a forged form for Lyon is refused on the page and creates nothing
    forged = page.request.post(
        "/console/staff",
        form={
            "csrf": page.locator("meta[name=csrf-token]").get_attribute("content") or "",
            "username": "mole",
            "password": PASSWORD,
            "role": "associate",
            "store_ids": site.ids["LYO1"],
        },
    )
    assert forged.status == 403 and "own stores" in forged.text()
    with site.crm.sessions() as session:
        assert session.scalar(select(StaffUser).where(StaffUser.username == "mole")) is None

    row = staff_row(page, "sam")
    row.locator("input[name=password]").fill("a brand new password")
    row.locator("button.reset").click()
    expect(page.locator("#notice")).to_have_text(
        "sam has a new password; their sessions have ended."
    )
    assert site.api_login("sam", "a brand new password") == 200
    # the old password fails; one free failure, then a 10-minute back-off
    assert site.api_login("sam", PASSWORD) == 401
    assert site.api_login("sam", "a brand new password") == 429
    page.reload()
    expect(staff_row(page, "sam").locator(".state")).to_contain_text("locked")
    staff_row(page, "sam").locator("button.unlock").click()
    expect(page.locator("#notice")).to_have_text("sam may log in again.")
    expect(staff_row(page, "sam").locator(".state")).to_have_text("active")
    assert site.api_login("sam", "a brand new password") == 200

    staff_row(page, "sam").locator("button.disable").click()
    expect(staff_row(page, "sam").locator(".state")).to_have_text("disabled")
    with site.crm.sessions() as session:
        assert not session.scalar(select(StaffUser.active).where(StaffUser.username == "sam"))
    staff_row(page, "sam").locator("button.enable").click()
    expect(staff_row(page, "sam").locator(".state")).to_have_text("active")
    # another store's account, by a forged form: unknown to this manager
    lou = page.request.post(
        f"/console/staff/{_staff_id(site, 'lou')}/disable",
        form={"csrf": page.locator("meta[name=csrf-token]").get_attribute("content") or ""},
    )
    assert lou.status == 404
    with site.crm.sessions() as session:
        assert session.scalar(select(StaffUser.active).where(StaffUser.username == "lou"))
    no_violations(page)
    page.context.close()


def _staff_id(site: Site, username: str) -> str:
    with site.crm.sessions() as session:
        return str(session.scalar(select(StaffUser.id).where(StaffUser.username == username)))


def test_the_manager_creates_rotates_and_revokes_a_device(checked: Checked, site: Site) -> None:
    page = open_as(checked, site, "maria", PASSWORD)
    page.goto("/console/devices")
    expect(page.locator("#devices tr[data-name='lyon door']")).to_have_count(0)
    page.fill("#new-device input[name=name]", "entrance")
    page.click("#new-device button")
    expect(page.locator("#notice")).to_have_text("Device entrance created.")
    key = page.locator("#device-key code").inner_text().strip()
    assert key.startswith("fcd_")
    row = page.locator("#devices tr[data-name=entrance]")
    expect(row.locator(".seen")).to_have_text("never")
    agent = {"X-API-Key": key, "X-Facecrm-Agent-Version": "0.1.0", "X-Facecrm-Queue-Depth": "7"}
    assert httpx.get(f"{site.url}/api/v1/agent/gallery", headers=agent).status_code == 200
    page.goto("/console/devices")  # the key is not shown again
    expect(page.locator("#device-key")).to_have_count(0)
    expect(row.locator(".version")).to_have_text("0.1.0")
    expect(row.locator(".queue")).to_have_text("7")
    expect(row.locator(".seen")).not_to_have_text("never")

    row.locator("button.rotate").click()
    expect(page.locator("#notice")).to_have_text("New key for entrance.")
    new_key = page.locator("#device-key code").inner_text().strip()
    assert new_key != key
    gallery = f"{site.url}/api/v1/agent/gallery"
    assert httpx.get(gallery, headers={"X-API-Key": key}).status_code == 401
    assert httpx.get(gallery, headers={"X-API-Key": new_key}).status_code == 200
    row.locator("button.revoke").click()
    expect(row.locator(".state")).to_have_text("revoked")
    assert httpx.get(gallery, headers={"X-API-Key": new_key}).status_code == 401

    csrf = page.locator("meta[name=csrf-token]").get_attribute("content") or ""
    other = page.request.post(
        f"/console/devices/{site.ids['lyon door']}/revoke", form={"csrf": csrf}
    )
    assert other.status == 404
    nocsrf = page.request.post(f"/console/devices/{site.ids['lyon door']}/rotate", form={})
    assert nocsrf.status == 403
    with site.crm.sessions() as session:
        assert session.get(Device, site.ids["lyon door"]).revoked_at is None  # type: ignore[union-attr]
    no_violations(page)
    page.context.close()


def test_the_manager_edits_rules_and_the_webhook(checked: Checked, site: Site) -> None:
    par = site.ids["PAR1"]
    page = open_as(checked, site, "maria", PASSWORD)
    page.click("header nav >> text=Stores")
    page.click("#stores tr[data-code=PAR1] >> text=Rules and webhook")
    days = page.locator("input[name='long_absence.days']")
    expect(days).to_have_value("90")
    expect(page.locator("#rule-long_absence")).to_contain_text("at least `days` days")
    days.fill("0")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("#rules button[type=submit]")
    assert posted.value.status == 422
    expect(page.locator("#error")).to_contain_text("rules.long_absence.days")
    expect(days).to_have_value("90")  # nothing was saved
    days.fill("30")
    page.uncheck("input[name='preferred_advisor.enabled']")
    page.uncheck("#rule-vip_arrival input[value=gold]")
    page.click("#rules button[type=submit]")
    expect(page.locator("#notice")).to_have_text("Rules saved.")
    expect(days).to_have_value("30")
    expect(page.locator("#rule-long_absence")).to_have_attribute("data-overridden", "true")
    expect(page.locator("#rule-unresolved_feedback")).to_have_attribute("data-overridden", "false")
    with site.crm.sessions() as session:
        in_force, _ = storeconfig.rules_in_force(session, par)
    assert in_force.long_absence.days == 30 and not in_force.preferred_advisor.enabled
    assert in_force.vip_arrival.tiers == ["vip"]

    hook = f"http://127.0.0.1:{site.hook.port}/hook"
    page.fill("#webhook input[name=url]", hook)
    page.click("#webhook form >> text=Save URL")
    first = page.locator("#webhook-secret code").inner_text().strip()
    assert first.startswith("whsec_")
    page.click("#rotate-secret")
    expect(page.locator("#notice")).to_have_text("New webhook secret.")
    secret = page.locator("#webhook-secret code").inner_text().strip()
    assert secret != first
    page.click("#send-test")
    expect(page.locator("#notice")).to_contain_text("Test event test:")
    headers, body = site.hook.wait(1)[0]
    expected = webhooks.signature(secret, headers["x-facecrm-timestamp"], body)
    assert hmac.compare_digest(headers["x-facecrm-signature"], expected)
    for _ in range(50):
        page.goto(f"/console/stores/{par}")
        if page.locator("#deliveries td.status").count():
            break
        time.sleep(0.2)
    expect(page.locator("#deliveries td.status").first).to_have_text("204")
    expect(page.locator("#webhook-secret")).to_have_count(0)  # never shown again
    assert secret not in page.content()

    # a URL the server must not call is a form error; the webhook stays as it was
    page.fill("#webhook input[name=url]", "https://10.0.0.1/hook")
    page.click("#webhook form >> text=Save URL")
    expect(page.locator("#error")).to_contain_text("non-public address")
    page.goto(f"/console/stores/{par}")
    expect(page.locator("#webhook input[name=url]")).to_have_value(hook)

    # another store's rules: refused, shown on the stores page, nothing of Lyon's shown
    response = page.goto(f"/console/stores/{site.ids['LYO1']}")
    assert response is not None and response.status == 403
    expect(page.locator("#error")).to_contain_text("not one of yours")
    expect(page.locator("#rules")).to_have_count(0)
    csrf = page.locator("meta[name=csrf-token]").get_attribute("content") or ""
    forged = page.request.post(
        f"/console/stores/{site.ids['LYO1']}/rules",
        form={"csrf": csrf, "long_absence.days": "5"},
    )
    assert forged.status == 403
    with site.crm.sessions() as session:
        assert storeconfig.rules_in_force(session, site.ids["LYO1"])[0].long_absence.days == 90
    no_violations(page)
    page.context.close()


def test_an_associate_has_no_admin_pages(checked: Checked, site: Site) -> None:
    page = open_as(checked, site, "sam", "a brand new password")
    expect(page.locator("header nav >> text=Staff")).to_have_count(0)
    for path in ("/console/staff", "/console/devices", f"/console/stores/{site.ids['PAR1']}"):
        response = page.goto(path)
        assert response is not None and response.status == 403, path
    page.context.close()


def test_pages_need_a_login(browser: Browser, site: Site) -> None:
    context = browser.new_context(base_url=site.url)
    page = context.new_page()
    for path in ("/console/staff", "/console/devices", "/console/stores"):
        page.goto(path)
        expect(page).to_have_url(f"{site.url}/console/login")
    context.close()
