"""In a real browser: the agent recognises a customer, the associate sees the alert live
and claims it; the phone look-up shows opted-in customers only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from browser import log_in, new_context
from facecrm.agent.runner import Agent, AgentConfig
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import Alert, AuditEvent
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

if TYPE_CHECKING:
    from conftest import VipStore

pytest.importorskip("playwright.sync_api", reason="browser tests need the dev extra (playwright)")
from playwright.sync_api import Browser, Page, expect

PASSWORD = "correct horse battery"


@pytest.fixture()
def shop(vip_store: VipStore) -> Iterator[dict]:
    crm = vip_store.crm
    with db.transaction(crm.sessions) as session:
        alice = accounts.create_staff(
            session, "alice", PASSWORD, "associate", [vip_store.store_id], principal=SYSTEM
        )
        ids = {"store": vip_store.store_id, "alice": alice.id, "key": vip_store.key}
    with serve(create_app(crm)) as url:
        yield {"url": url, "crm": crm, "lin": vip_store.lin, **ids}


@pytest.fixture()
def page(browser: Browser, shop: dict) -> Iterator[Page]:
    context = new_context(browser, shop["url"])
    page = context.new_page()
    log_in(page, "alice", PASSWORD)
    expect(page.locator("h1")).to_have_text("Customers")
    yield page
    context.close()


def test_live_alert_is_shown_and_claimed(
    page: Page, shop: dict, pipeline: FacePipeline, faces_dir: Path, tmp_path: Path
) -> None:
    page.goto("/console/alerts")
    expect(page.locator("#stream-state")).to_have_text("Live.")
    video = faces_dir / "video" / "short_hamilton_clip.mp4"
    Agent(
        AgentConfig(
            server=shop["url"],
            api_key=shop["key"],
            cameras=(str(video),),
            data_dir=tmp_path / "agent",
            realtime=False,
            exit_when_done=True,
        ),
        pipeline,
    ).run()
    item = page.locator("#alerts li.alert").first
    expect(item).to_contain_text("Lin-Manuel Miranda has arrived")
    expect(item).to_contain_text("VIP customer")
    item.locator("button.claim").click()
    expect(item.locator(".state")).to_have_text("claimed by you")
    item.locator("button.ack").click()
    expect(item.locator(".state")).to_contain_text("greeted after")
    with shop["crm"].sessions() as session:
        (alert,) = session.scalars(select(Alert)).all()
    assert alert.claimed_by == shop["alice"] and alert.acknowledged_at is not None


def test_phone_lookup(page: Page, shop: dict, faces_dir: Path) -> None:
    page.goto("/console/lookup")
    page.set_input_files("#shot", str(faces_dir / "identities/lin_manuel_miranda/1.png"))
    expect(page.locator("#answer")).to_contain_text("Lin-Manuel Miranda (vip)")
    page.set_input_files("#shot", str(faces_dir / "distractors/paul_rudd.jpg"))
    expect(page.locator("#answer")).to_have_text("No opted-in customer.")
    with shop["crm"].sessions() as session:
        lookups = session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("phone_lookup%"))
        ).all()
    assert {e.action for e in lookups} == {"phone_lookup", "phone_lookup_summary"}
    assert all(e.customer_id in {None, shop["lin"]} for e in lookups)
