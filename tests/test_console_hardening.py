"""The console's customer card with real activity, and its browser hardening (CSP), in Chromium."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from browser import log_in as send_log_in
from browser import new_context, page_errors, wait_until
from facecrm.config import Settings
from facecrm.crm import accounts, activity, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.service import FaceCRM, Photo
from facecrm.server import create_app
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import FacePipeline

from server import serve

pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra (playwright)")
from playwright.sync_api import Browser, BrowserContext, Page, expect

PASSWORD = "correct horse battery"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@dataclass
class Site:
    url: str
    crm: FaceCRM
    rose: str  # the customer with activity in store A (and some in store B)


@pytest.fixture(scope="module")
def site(module_settings: Settings, pipeline: FacePipeline, faces_dir: Path) -> Iterator[Site]:
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "Store A", SYSTEM)
        other = accounts.create_store(session, "B", "Store B", SYSTEM)
        accounts.create_staff(session, "alice", PASSWORD, "associate", [store.id], principal=SYSTEM)
        accounts.create_staff(session, "audrey", PASSWORD, "auditor", [], principal=SYSTEM)
        store_id, other_id = store.id, other.id
    rose = crm.enroll(
        "Rose Leslie",
        [Photo("seed", read_image(faces_dir / "identities/rose_leslie/1.jpg", crm.settings))],
        CURRENT,
        "kiosk",
        SYSTEM,
        profile={"tier": "vip", "show_photo": True, "preferences": {"size": "38"}},
    )
    with db.transaction(crm.sessions) as session:
        add = activity.add_purchase
        add(
            session,
            SYSTEM,
            rose.id,
            store_id,
            [
                activity.Item("B-38", "Red boots", 1, 12_900),
                activity.Item("S-01", "Wool socks", 3, 900),
                activity.Item("P-02", "Shoe polish", 2, 450),
            ],
        )
        add(session, SYSTEM, rose.id, other_id, [activity.Item("H-1", "Hidden hat", 1, 5000)])
        activity.add_interest(session, SYSTEM, rose.id, store_id, "Green scarf", out_of_stock=True)
        activity.add_feedback(session, SYSTEM, rose.id, store_id, "Lovely fitting room", rating=5)
        activity.record_visit(session, SYSTEM, rose.id, store_id, "agent", similarity=0.71)
    with serve(create_app(crm)) as url:
        yield Site(url, crm, rose.id)
    crm.engine.dispose()


@pytest.fixture()
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    context = new_context(browser, site.url)
    yield context
    context.close()


RECORD_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) => {
  const seen = JSON.parse(sessionStorage.getItem("csp") || "[]");
  seen.push(e.violatedDirective + " " + e.blockedURI);
  sessionStorage.setItem("csp", JSON.stringify(seen));
});"""


def watch(page: Page) -> list[str]:
    """Script errors and CSP reports of `page` (console and `securitypolicyviolation`)."""
    page.add_init_script(RECORD_VIOLATIONS)  # kept in the page, across navigations
    return page_errors(page)


def violations(page: Page) -> list[str]:
    return list(page.evaluate("JSON.parse(sessionStorage.getItem('csp') || '[]')"))


@pytest.fixture()
def page(context: BrowserContext) -> Iterator[Page]:
    """A page that fails the test on a script error or on any CSP violation Chromium reports."""
    page = context.new_page()
    errors = watch(page)
    yield page
    errors += violations(page)
    assert not errors, errors


def log_in(page: Page, username: str = "alice") -> None:
    send_log_in(page, username, PASSWORD)
    expect(page.locator("header .who")).to_contain_text(username)


def test_card_shows_purchases_interests_feedback_and_visits(page: Page, site: Site) -> None:
    log_in(page)
    response = page.goto(f"/console/customers/{site.rose}")
    assert response is not None and response.status == 200
    card = page.locator("#customer-card")
    expect(card.locator("h1")).to_contain_text("Rose Leslie")
    purchases = page.locator("#purchases li")
    expect(purchases).to_have_count(1)  # the purchase in store B is not alice's to see
    expect(purchases).to_contain_text("165.00 EUR")
    expect(purchases).to_contain_text("1× Red boots, 3× Wool socks, 2× Shoe polish")  # noqa: RUF001
    expect(page.locator("#interests")).to_contain_text("Green scarf (was out of stock)")
    expect(page.locator("#feedback")).to_contain_text("5/5 · Lovely fitting room")
    expect(page.locator("#visits li")).to_have_count(1)
    expect(page.locator("#visits")).to_contain_text("store ")
    expect(card).to_contain_text("size: 38")
    expect(card).not_to_contain_text("Hidden hat")


def test_card_keeps_the_connection_alive(page: Page, context: BrowserContext, site: Site) -> None:
    """Two card requests on one keep-alive connection both succeed (a 500 used to reset it)."""
    log_in(page)
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in context.cookies())
    address = urlsplit(site.url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=20)
    try:
        sockets = []
        for _ in range(2):
            connection.request(
                "GET", f"/console/customers/{site.rose}", headers={"Cookie": cookies}
            )
            response = connection.getresponse()
            body = response.read().decode()
            assert response.status == 200, body[:500]
            assert "Wool socks" in body
            sockets.append(connection.sock)
        assert sockets[0] is not None and sockets[0] is sockets[1]  # no reconnect in between
    finally:
        connection.close()


def test_every_console_page_has_the_csp_and_works_without_violations(
    page: Page, context: BrowserContext, site: Site, faces_dir: Path
) -> None:
    """Each page carries the policy; its scripts (camera, upload, live stream) still work."""

    def visit(path: str) -> None:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        assert response.headers.get("content-security-policy") == CSP, path
        hop = response.request.redirected_from
        if hop is not None:  # the redirect that led here carries it too
            assert (hop_response := hop.response()) is not None
            assert hop_response.headers.get("content-security-policy") == CSP, hop.url

    visit("/console/login")
    log_in(page)
    visit("/console/")  # home: redirects to the customer search
    expect(page.locator("h1")).to_have_text("Customers")
    visit("/console/customers?q=rose")
    page.click("text=Rose Leslie")
    expect(page.locator("#purchases")).to_contain_text("Wool socks")
    # the photo loads under the policy (waited for: the page may render before the image;
    # not with wait_for_function, whose polling evaluates strings, which the policy forbids)
    expect(page.locator("img.photo")).to_have_js_property("complete", True, timeout=10_000)
    assert page.evaluate("document.querySelector('img.photo').naturalWidth") > 0
    visit(f"/console/customers/{site.rose}")

    visit("/console/alerts")
    expect(page.locator("#stream-state")).to_have_text("Live.")

    visit("/console/lookup")
    page.set_input_files("#shot", str(faces_dir / "identities/rose_leslie/2.jpg"))
    expect(page.locator("#answer a")).to_have_text("Rose Leslie (vip)")

    visit("/console/enroll")
    page.fill("input[name=name]", "Kit Harington")
    page.check("input[name=consent]")
    page.click("#start-camera")
    expect(page.locator("#take-photo")).to_be_enabled()
    wait_until(page, "document.getElementById('video').videoWidth > 0")
    page.click("#take-photo")
    expect(page.locator("#photo-state")).to_contain_text("Photo taken")
    page.click("#submit")
    expect(page.locator("#result")).to_contain_text("Enrolled")

    page.click("header button[type=submit]")  # log out, then the auditor's page
    log_in(page, "audrey")
    visit("/console/audit")
    expect(page.locator("#chain")).to_contain_text("Hash chain intact")


def test_the_policy_blocks_an_injected_inline_script(context: BrowserContext, site: Site) -> None:
    """The CSP is enforced, not just sent: an inline script added to a page does not run."""
    page = context.new_page()
    errors = watch(page)
    log_in(page)
    page.goto(f"/console/customers/{site.rose}")
    page.evaluate(
        """() => {
             const s = document.createElement("script");
             s.textContent = "window.injected = true";
             document.body.append(s);
           }"""
    )
    assert page.evaluate("window.injected === undefined")
    wait_until(page, "(sessionStorage.getItem('csp') || '').includes('script-src')")
    assert any("Content Security Policy" in e for e in errors), errors


def test_hsts_only_over_https(site: Site) -> None:
    """HSTS when uvicorn sees https (here: X-Forwarded-Proto from its trusted local proxy)."""
    https = httpx.get(f"{site.url}/console/login", headers={"X-Forwarded-Proto": "https"})
    assert https.status_code == 200
    assert https.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert "; secure" in https.headers["set-cookie"].lower()  # the CSRF cookie too
    plain = httpx.get(f"{site.url}/console/login")
    assert plain.status_code == 200
    assert "strict-transport-security" not in plain.headers
    assert plain.headers["content-security-policy"] == CSP


def test_no_cdn_backed_api_docs(site: Site) -> None:
    """Swagger UI and ReDoc (scripts from a CDN) are off; the schema is still served."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(f"{site.url}{path}").status_code == 404, path
    schema = httpx.get(f"{site.url}/openapi.json")
    assert schema.status_code == 200
    assert "/api/v1/customers" in schema.json()["paths"]
