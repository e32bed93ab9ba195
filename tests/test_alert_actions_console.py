"""In a real Chromium: "Not this person" on an alert and on a look-up answer, the alert's
reasons, camera, store time and photo, the Card link, and the history view."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from browser import log_in, new_context
from facecrm.alerts.service import AlertService
from facecrm.crm import accounts, customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import Alert, MatchDispute, Visit
from facecrm.crm.service import Photo
from facecrm.server import create_app
from facecrm.vision.image import read_image

from server import serve

if TYPE_CHECKING:
    from conftest import VipStore

pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra (playwright)")
from playwright.sync_api import Browser, Page, expect

PASSWORD = "correct horse battery"


@pytest.fixture()
def shop(vip_store: VipStore, faces_dir: Path) -> Iterator[dict]:
    crm = vip_store.crm
    with db.transaction(crm.sessions) as session:
        accounts.create_staff(
            session, "alice", PASSWORD, "associate", [vip_store.store_id], principal=SYSTEM
        )
        customers.update(session, SYSTEM, vip_store.lin, {"show_photo": True})
    still = read_image(faces_dir / "identities/lin_manuel_miranda/1.png", crm.settings)
    crm.add_photos(vip_store.lin, [Photo("still", still)], SYSTEM, keep_photo=True)  # agreed
    AlertService(crm).configure_store(
        SYSTEM, vip_store.store_id, {}, None, None, "America/New_York"
    )
    with serve(create_app(crm)) as url:
        yield {"url": url, "crm": crm, "lin": vip_store.lin, "key": vip_store.key}


@pytest.fixture()
def page(browser: Browser, shop: dict) -> Iterator[Page]:
    context = new_context(browser, shop["url"])
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # "Not this person?" confirmation
    log_in(page, "alice", PASSWORD)
    expect(page.locator("h1")).to_have_text("Customers")
    yield page
    context.close()


def arrive(shop: dict, key: str, at: datetime) -> None:
    event = {"key": key, "type": "visit", "customer_id": shop["lin"], "at": at.isoformat()}
    body = {"events": [{**event, "camera": "rtsp://u:pw@entrance/cam", "similarity": 0.7}]}
    r = httpx.post(
        f"{shop['url']}/api/v1/agent/events", json=body, headers={"X-API-Key": shop["key"]}
    )
    assert r.json()["outcomes"] == ["visit"], r.text


def test_not_this_person_on_an_alert_and_the_history(page: Page, shop: dict) -> None:
    at = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    arrive(shop, "visit-b-0001", at)
    page.goto("/console/alerts")
    item = page.locator("#alerts li.alert").first
    expect(item.locator(".message")).to_contain_text("Lin-Manuel Miranda has arrived")
    expect(item.locator(".reasons")).to_contain_text("A VIP customer")
    local = at.astimezone(ZoneInfo("America/New_York"))
    expect(item.locator(".where")).to_have_text(
        f"rtsp://entrance/cam · {local:%H:%M} America/New_York"
    )
    expect(item.locator("img.face")).to_have_attribute(
        "src", f"/console/customers/{shop['lin']}/photo"
    )
    assert item.locator("img.face").evaluate("img => img.naturalWidth") > 0

    item.locator("button.dispute").click()
    expect(item.locator(".state")).to_have_text("not this person: disputed")
    with shop["crm"].sessions() as session:
        alert = session.scalars(select(Alert)).one()
        visit = session.scalars(select(Visit)).one()
        dispute = session.scalars(select(MatchDispute)).one()
    assert alert.outcome == "disputed" and visit.disputed
    assert (dispute.source, dispute.camera) == ("alert", "rtsp://entrance/cam")

    page.goto("/console/alerts")
    expect(page.locator("#alerts li.alert")).to_have_count(0)  # closed: not live any more
    page.goto("/console/customers/" + shop["lin"])
    expect(page.locator("#visits")).to_have_text("None in your stores")  # out of the history

    page.goto("/console/alerts")
    page.click("text=History")
    expect(page.locator("h1")).to_have_text("Alert history")
    row = page.locator("#history li.alert").first
    expect(row.locator(".state")).to_contain_text("disputed")
    row.locator("a.card-link").click()  # the Card link works from the history too
    expect(page.locator("#customer-card h1")).to_contain_text("Lin-Manuel Miranda")


def test_history_pages(page: Page, shop: dict) -> None:
    service = AlertService(shop["crm"])
    with db.transaction(shop["crm"].sessions) as session:
        store = accounts.list_stores(session, SYSTEM)[0].id
    for n in range(27):
        # not a camera alert: those are for managers, and Alice is an associate
        alert = service.raise_alert(SYSTEM, store, "till_offline", f"Till {n} is offline")
        service.dismiss(SYSTEM, alert.id)
    page.goto("/console/alerts/history")
    expect(page.locator("#history li.alert")).to_have_count(25)
    expect(page.locator("#history li.alert").first).to_contain_text("Till 26 is offline")
    expect(page.locator("#history a.card-link")).to_have_count(0)  # not about a customer
    page.click("#older")
    expect(page.locator("#history li.alert")).to_have_count(2)
    expect(page.locator("#history li.alert").last).to_contain_text("Till 0 is offline")
    expect(page.locator("#older")).to_have_count(0)
    page.click("#newer")
    expect(page.locator("#history li.alert")).to_have_count(25)


def test_not_this_person_on_a_lookup_answer(page: Page, shop: dict, faces_dir: Path) -> None:
    page.goto("/console/lookup")
    page.set_input_files("#shot", str(faces_dir / "identities/lin_manuel_miranda/1.png"))
    expect(page.locator("#answer")).to_contain_text("Lin-Manuel Miranda (vip)")
    page.click("#not-this-person")
    expect(page.locator("#answer")).to_have_text("Noted: not this person. Thank you.")
    with shop["crm"].sessions() as session:
        dispute = session.scalars(select(MatchDispute)).one()
    assert dispute.source == "lookup" and dispute.customer_id == shop["lin"]
    assert dispute.similarity is not None and dispute.similarity > 0.5
