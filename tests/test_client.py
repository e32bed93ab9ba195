"""The typed HTTP client (`facecrm.client`) against a real server, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from facecrm import demo
from facecrm.api import schemas
from facecrm.client import (
    Card,
    Client,
    ClientError,
    CustomerSummary,
    Me,
    Token,
    Verification,
)
from facecrm.config import Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import free_port, serve

PASSWORD = "correct horse battery"
COLLINS = Path(str(resources.files("facecrm") / "demo_data" / "eileen_collins_nasa.jpg"))


@dataclass
class Server:
    url: str
    store: str
    device_key: str


@pytest.fixture(scope="module")
def server(module_settings: Settings, pipeline: FacePipeline) -> Iterator[Server]:
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "Store A", SYSTEM).id
        accounts.create_staff(session, "admin", PASSWORD, "admin", [], principal=SYSTEM)
        accounts.create_staff(session, "manager", PASSWORD, "manager", [store], principal=SYSTEM)
        _, key = accounts.create_device(session, store, "agent", principal=SYSTEM)
    with serve(create_app(crm)) as url:
        yield Server(url, store, key)
    crm.engine.dispose()


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[Client]:
    with Client.login(server.url, "admin", PASSWORD) as client:
        yield client


def test_login_me_and_logout(server: Server) -> None:
    client = Client.login(server.url, "manager", PASSWORD)
    me = client.me()
    assert isinstance(me, Me) and (me.name, me.role, me.stores) == (
        "manager",
        "manager",
        [server.store],
    )
    client.logout()
    with pytest.raises(ClientError) as refused:
        client.me()
    assert refused.value.status == 401
    with pytest.raises(ClientError) as wrong:
        Client.login(server.url, "manager", "not the password")
    assert wrong.value.status == 401 and wrong.value.body["status"] == 401 and wrong.value.detail
    with pytest.raises(ClientError) as nobody:
        Client(f"http://127.0.0.1:{free_port()}", timeout=5).me()
    assert (nobody.value.status, nobody.value.reason) == (0, "unreachable")
    with pytest.raises(ValueError):
        Client(server.url, token="t", api_key="k")


def test_a_customer_from_creation_to_erasure(admin: Client, server: Server) -> None:
    ada = admin.create_customer("Grace Hopper", tier="gold", loyalty_id="L-client-1")
    assert (ada.name, ada.tier, ada.loyalty_id) == ("Grace Hopper", "gold", "L-client-1")
    found = admin.search_customers("Grace Hopper")
    assert [c.id for c in found] == [ada.id] and isinstance(found[0], CustomerSummary)
    assert admin.update_customer(ada.id, preferred_name="Amazing Grace").preferred_name == (
        "Amazing Grace"
    )
    consent = admin.give_consent(
        ada.id, text_version=CURRENT, channel="kiosk", store_id=server.store
    )
    assert consent.active and consent.text_version == CURRENT
    added = admin.add_face(ada.id, demo.hopper())  # a numpy array
    assert added.template_id > 0 and added.quality
    card = admin.get_customer(ada.id)
    assert isinstance(card, Card) and card.templates == 1 and card.consents[0].active

    seen = admin.identify(demo.side_by_side(demo.another_day(demo.hopper()), demo.collins()))
    known = [f.customer for f in seen.faces if f.customer is not None]
    assert [(c.id, c.name) for c in known] == [(ada.id, "Grace Hopper")]
    assert known[0].similarity >= seen.threshold and len(seen.faces) == 2
    (stranger,) = admin.identify(COLLINS).faces  # a path
    assert stranger.customer is None and stranger.box.width > 50
    (stranger,) = admin.identify(COLLINS.read_bytes()).faces  # bytes
    assert stranger.customer is None

    verified = admin.verify(ada.id, demo.another_day(demo.hopper()))
    assert isinstance(verified, Verification) and verified.match
    assert not admin.verify(ada.id, COLLINS).match

    export = admin.export_customer(ada.id)
    assert export.customer.id == ada.id
    # the photo's template of each model of the cascade: the export lists all that is held
    assert [t.model_id for t in export.face_templates] == ["dlib-resnet-v1", "sface-2021dec"]

    admin.withdraw_consent(ada.id)
    assert all(f.customer is None for f in admin.identify(demo.hopper()).faces)
    assert admin.get_customer(ada.id).templates == 0

    admin.erase_customer(ada.id)
    with pytest.raises(ClientError) as gone:
        admin.get_customer(ada.id)
    assert (gone.value.status, gone.value.reason) == (404, "not_found")
    assert admin.search_customers("Grace Hopper") == []


def test_refusals_carry_status_reason_and_detail(admin: Client, server: Server) -> None:
    eileen = admin.create_customer("Eileen Collins")
    with pytest.raises(ClientError) as no_consent:
        admin.add_face(eileen.id, COLLINS)
    assert (no_consent.value.status, no_consent.value.reason) == (409, "consent_required")
    assert "consent" in no_consent.value.detail
    with pytest.raises(ClientError) as old_text:
        admin.give_consent(eileen.id, text_version="1999-v0", channel="kiosk")
    assert old_text.value.status == 422
    admin.give_consent(eileen.id, text_version=CURRENT, channel="web")
    admin.add_face(eileen.id, COLLINS)
    twin = admin.create_customer("Eileen Again")
    admin.give_consent(twin.id, text_version=CURRENT, channel="web")
    with pytest.raises(ClientError) as duplicate:
        admin.add_face(twin.id, COLLINS.read_bytes())
    assert (duplicate.value.status, duplicate.value.reason) == (409, "already_enrolled")
    with pytest.raises(ClientError) as bad_photo:
        admin.identify(b"not a photo")
    assert bad_photo.value.status == 422 and bad_photo.value.reason
    with pytest.raises(ValueError):
        admin.identify(demo.hopper()[:, :, 0])  # not RGB: refused before sending
    for customer in (eileen, twin):
        admin.erase_customer(customer.id)


def test_visits_and_alerts(admin: Client, server: Server) -> None:
    vip = admin.create_customer("Vip Visitor", tier="vip")
    visit = admin.record_visit(vip.id, server.store, at=datetime(2026, 1, 2, 10, tzinfo=UTC))
    assert (visit.customer_id, visit.store_id, visit.source) == (vip.id, server.store, "manual")
    assert [v.id for v in admin.visits(customer_id=vip.id)] == [visit.id]
    # a store agent reports the VIP at the door: the arrival rule raises an alert
    with httpx.Client(base_url=server.url, headers={"X-API-Key": server.device_key}) as agent:
        event = {
            "key": "client-test-0001",
            "type": "visit",
            "customer_id": vip.id,
            "at": datetime.now(UTC).isoformat(),
            "similarity": 0.9,
        }
        r = agent.post("/api/v1/agent/events", json={"events": [event]})
        assert r.json()["outcomes"] == ["visit"], r.text
    with Client.login(server.url, "manager", PASSWORD) as manager:
        (alert,) = [a for a in manager.alerts() if a.customer_id == vip.id]
        assert alert.store_id == server.store and alert.claimed_by is None
        claimed = manager.claim_alert(alert.id)
        assert claimed.claimed_by and claimed.claimed_at is not None
        acked = manager.ack_alert(alert.id)
        assert acked.acknowledged_at is not None
        assert all(a.id != alert.id for a in manager.alerts())
        with pytest.raises(ClientError) as missing:
            manager.claim_alert(999_999)
        assert missing.value.status == 404
    admin.erase_customer(vip.id)


def test_a_device_key_identifies(server: Server) -> None:
    with Client(server.url, api_key=server.device_key) as device:
        (face,) = device.identify(COLLINS).faces
        assert face.customer is None
        with pytest.raises(ClientError) as forbidden:
            device.search_customers()
        assert forbidden.value.status == 403


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [
        (Token, schemas.Token),
        (Me, schemas.Me),
        (CustomerSummary, schemas.CustomerSummary),
        (Verification, schemas.VerifyOut),
    ],
)
def test_models_mirror_the_server(mine: type[BaseModel], theirs: type[BaseModel]) -> None:
    assert set(mine.model_fields) == set(theirs.model_fields)
