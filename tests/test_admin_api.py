"""The admin and manager operations over the API, on SQLite and PostgreSQL: staff (list,
create, stores, disable, password reset, unlock), devices (rotate, heartbeat), the store
configuration in force, and the webhook (server-made secrets, test event, delivery log).

Managers act on the associates, devices and rules of their own stores only.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event, select

from facecrm import __version__
from facecrm.agent.runner import Agent, AgentConfig
from facecrm.alerts import rules, webhooks
from facecrm.crm import accounts, customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import AuditEvent, DeviceStatus, StaffUser, WebhookDelivery
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline
from receiver import Receiver

from server import serve

PASSWORD = "correct horse battery"


@dataclass
class Chain:
    url: str
    crm: FaceCRM
    ids: dict[str, str] = field(default_factory=dict)

    def token(self, username: str, password: str = PASSWORD) -> str:
        r = httpx.post(
            f"{self.url}/api/v1/auth/token", data={"username": username, "password": password}
        )
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def as_(self, username: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(username)}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def active(self, username: str) -> bool:
        with self.crm.sessions() as session:
            user = session.scalar(select(StaffUser).where(StaffUser.username == username))
            assert user is not None
            return user.active


@pytest.fixture()
def chain(crm: FaceCRM) -> Iterator[Chain]:
    """Stores A and B; an admin; a manager of A (ma) and of B (mb); associates of A (a1),
    of B (b1) and of both (ab)."""
    crm.settings.login_free_failures = 1
    crm.settings.login_backoff_seconds = 600
    crm.settings.login_known_address_days = 0  # every log-in here comes from 127.0.0.1
    ids: dict[str, str] = {}
    with db.transaction(crm.sessions) as session:
        for code in ("A", "B"):
            ids[code] = accounts.create_store(session, code, f"Store {code}", SYSTEM).id
        for name, role, stores in (
            ("admin", "admin", []),
            ("ma", "manager", ["A"]),
            ("mb", "manager", ["B"]),
            ("a1", "associate", ["A"]),
            ("b1", "associate", ["B"]),
            ("ab", "associate", ["A", "B"]),
        ):
            store_ids = [ids[s] for s in stores]
            user = accounts.create_staff(session, name, PASSWORD, role, store_ids, principal=SYSTEM)
            ids[name] = user.id
    with serve(create_app(crm)) as url:
        yield Chain(url, crm, ids)


def test_a_manager_sees_and_manages_only_the_associates_of_their_stores(chain: Chain) -> None:
    ids = chain.ids
    ma = chain.as_("ma")
    seen = {u["username"]: u for u in ma.get("/api/v1/staff").json()}
    assert set(seen) == {"ma", "a1", "ab"}  # not B's staff, not the chain-wide admin
    assert seen["a1"]["manageable"] and not seen["ab"]["manageable"]
    assert not seen["ma"]["manageable"]

    new = {"username": "a2", "password": PASSWORD, "role": "associate", "store_ids": [ids["A"]]}
    made = ma.post("/api/v1/staff", json=new)
    assert made.status_code == 201 and made.json()["store_ids"] == [ids["A"]]
    for refused in (
        {**new, "username": "m2", "role": "manager"},
        {**new, "username": "x1", "store_ids": [ids["B"]]},
        {**new, "username": "x2", "store_ids": [ids["A"], ids["B"]]},
        {**new, "username": "x3", "store_ids": []},
    ):
        assert ma.post("/api/v1/staff", json=refused).status_code == 403, refused

    assert ma.post(f"/api/v1/staff/{ids['b1']}/disable").status_code == 404  # another store's
    assert ma.post(f"/api/v1/staff/{ids['ab']}/disable").status_code == 403  # shared with B
    assert (
        ma.post(f"/api/v1/staff/{ids['mb']}/password", json={"password": "x" * 12}).status_code
        == 404
    )
    body = {"store_ids": [ids["B"]]}
    assert ma.put(f"/api/v1/staff/{ids['a1']}/stores", json=body).status_code == 403
    assert chain.active("b1") and chain.active("ab")

    old = chain.token("a1")
    assert (
        ma.post(
            f"/api/v1/staff/{ids['a1']}/password", json={"password": "a new password"}
        ).status_code
        == 204
    )
    me = httpx.get(f"{chain.url}/api/v1/me", headers={"Authorization": f"Bearer {old}"})
    assert me.status_code == 401
    chain.token("a1", "a new password")
    assert ma.post(f"/api/v1/staff/{ids['a1']}/disable").status_code == 204
    assert not chain.active("a1")
    assert ma.post(f"/api/v1/staff/{ids['a1']}/enable").status_code == 204

    associate = chain.as_("b1")
    assert associate.get("/api/v1/staff").status_code == 403
    assert associate.post("/api/v1/staff", json={**new, "username": "x4"}).status_code == 403

    admin = chain.as_("admin")
    assert len(admin.get("/api/v1/staff").json()) == 7
    body = {"store_ids": [ids["A"], ids["B"]]}
    assert admin.put(f"/api/v1/staff/{ids['b1']}/stores", json=body).json()["store_ids"] == [
        ids["A"],
        ids["B"],
    ]


def test_taking_a_store_away_ends_the_sessions_and_is_audited(chain: Chain) -> None:
    ids = chain.ids
    old = chain.token("ab")
    admin = chain.as_("admin")
    r = admin.put(f"/api/v1/staff/{ids['ab']}/stores", json={"store_ids": [ids["A"]]})
    assert r.status_code == 200 and r.json()["store_ids"] == [ids["A"]]
    me = httpx.get(f"{chain.url}/api/v1/me", headers={"Authorization": f"Bearer {old}"})
    assert me.status_code == 401
    assert chain.as_("ab").get("/api/v1/me").json()["stores"] == [ids["A"]]
    # an unknown store or a store for the chain-wide admin changes nothing
    assert (
        admin.put(f"/api/v1/staff/{ids['ab']}/stores", json={"store_ids": ["nope"]}).status_code
        == 404
    )
    r = admin.put(f"/api/v1/staff/{ids['admin']}/stores", json={"store_ids": [ids["A"]]})
    assert r.status_code == 422
    with chain.crm.sessions() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "staff_stores"))
        assert [(e.actor, e.detail["username"]) for e in events] == [("staff:admin", "ab")]


def test_a_manager_unlocks_an_associate_after_log_in_throttling(chain: Chain) -> None:
    ids = chain.ids
    for _ in range(2):
        httpx.post(
            f"{chain.url}/api/v1/auth/token", data={"username": "a1", "password": "wrong one!"}
        )
    locked = httpx.post(
        f"{chain.url}/api/v1/auth/token", data={"username": "a1", "password": PASSWORD}
    )
    assert locked.status_code == 429
    ma = chain.as_("ma")
    seen = {u["username"]: u for u in ma.get("/api/v1/staff").json()}
    assert seen["a1"]["locked_seconds"] > 0 and seen["ma"]["locked_seconds"] == 0
    assert chain.as_("mb").post(f"/api/v1/staff/{ids['a1']}/unlock").status_code == 404
    r = ma.post(f"/api/v1/staff/{ids['a1']}/unlock")
    assert r.json() == {"username": "a1", "was_locked": True}
    chain.token("a1")  # logs in again
    assert ma.post(f"/api/v1/staff/{ids['a1']}/unlock").json()["was_locked"] is False


def test_devices_rotate_keys_and_report_their_heartbeat(chain: Chain) -> None:
    ids = chain.ids
    ma = chain.as_("ma")
    made = ma.post("/api/v1/devices", json={"store_id": ids["A"], "kind": "agent", "name": "door"})
    device, key = made.json()["id"], made.json()["api_key"]
    (listed,) = ma.get("/api/v1/devices").json()
    assert listed["last_seen_at"] is None and listed["agent_version"] is None
    # any request of the device: last seen; the old per-request headers are not read
    stale = {"X-API-Key": key, "X-Facecrm-Agent-Version": "0.0.1", "X-Facecrm-Queue-Depth": "9"}
    assert httpx.get(f"{chain.url}/api/v1/agent/gallery", headers=stale).status_code == 200
    (listed,) = ma.get("/api/v1/devices").json()
    assert (listed["agent_version"], listed["queue_depth"]) == (None, None)
    seen = datetime.fromisoformat(listed["last_seen_at"])
    assert datetime.now(UTC) - seen < timedelta(minutes=1)
    # the heartbeat: version and outbox depth
    beat = f"{chain.url}/api/v1/agent/heartbeat"
    agent = {"X-API-Key": key}
    body = {"version": "9.9.9", "queue_depth": 3, "cameras": []}
    assert httpx.post(beat, headers=agent, json=body).status_code == 200
    (listed,) = ma.get("/api/v1/devices").json()
    assert (listed["agent_version"], listed["queue_depth"]) == ("9.9.9", 3)
    # a hostile report is a 422 and changes nothing
    for bad in ({"version": "x" * 80}, {"version": "9\n9"}, {"queue_depth": 2**31}):
        assert httpx.post(beat, headers=agent, json=bad).status_code == 422
    assert httpx.post(beat, headers=agent, json={}).status_code == 200  # left out: unchanged
    (listed,) = ma.get("/api/v1/devices").json()
    assert (listed["agent_version"], listed["queue_depth"]) == ("9.9.9", 3)

    assert chain.as_("mb").get("/api/v1/devices").json() == []  # B's manager sees none
    assert chain.as_("mb").post(f"/api/v1/devices/{device}/rotate").status_code == 404
    rotated = ma.post(f"/api/v1/devices/{device}/rotate").json()
    assert rotated["id"] == device and rotated["api_key"] != key
    old = httpx.get(f"{chain.url}/api/v1/agent/gallery", headers={"X-API-Key": key})
    new = httpx.get(f"{chain.url}/api/v1/agent/gallery", headers={"X-API-Key": rotated["api_key"]})
    assert (old.status_code, new.status_code) == (401, 200)
    assert ma.post(f"/api/v1/devices/{device}/revoke").status_code == 204
    assert ma.post(f"/api/v1/devices/{device}/rotate").status_code == 409


def test_the_config_in_force_has_every_rule_with_its_default_and_description(
    chain: Chain,
) -> None:
    assert set(rules.DESCRIPTIONS) == set(rules.RuleSettings.model_fields)
    a = chain.ids["A"]
    ma = chain.as_("ma")
    config = ma.get(f"/api/v1/stores/{a}/config").json()
    by_name = {r["name"]: r for r in config["rules"]}
    assert list(by_name) == list(rules.RuleSettings.model_fields)
    for name, rule in by_name.items():
        assert rule["value"] == rule["default"] == rules.DEFAULT_RULES[name]
        assert rule["description"] == rules.DESCRIPTIONS[name] and not rule["overridden"]
    assert config["webhook_url"] is None and config["webhook_secret_set"] is False

    changed = ma.put(f"/api/v1/stores/{a}/rules", json={"long_absence": {"days": 30}}).json()
    absence = {r["name"]: r for r in changed["rules"]}["long_absence"]
    assert absence["value"] == {"enabled": True, "days": 30} and absence["default"]["days"] == 90
    assert absence["overridden"]
    for bad in ({"long_absence": {"days": 0}}, {"nope": {}}, {"vip_arrival": {"tiers": []}}):
        r = ma.put(f"/api/v1/stores/{a}/rules", json=bad)
        assert r.status_code == 422, bad
    assert ma.get(f"/api/v1/stores/{a}/config").json() == changed  # nothing written

    mb = chain.as_("mb")
    assert mb.get(f"/api/v1/stores/{a}/config").status_code == 403
    assert mb.put(f"/api/v1/stores/{a}/rules", json={}).status_code == 403
    assert chain.as_("a1").get(f"/api/v1/stores/{a}/config").status_code == 403
    assert ma.get("/api/v1/stores/nope/config").status_code == 403


def signed_by(secret: str, request: tuple[dict[str, str], bytes]) -> bool:
    headers, body = request
    expected = webhooks.signature(secret, headers["x-facecrm-timestamp"], body)
    return hmac.compare_digest(headers["x-facecrm-signature"], expected)


def deliveries(client: httpx.Client, store: str, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 15
    while True:
        rows: list[dict[str, object]] = client.get(
            f"/api/v1/stores/{store}/webhook/deliveries"
        ).json()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_webhook_secret_rotation_test_event_and_delivery_log(chain: Chain) -> None:
    a = chain.ids["A"]
    ma = chain.as_("ma")
    hook = Receiver(statuses=[503])  # the first attempt fails: a retry follows
    url = f"http://127.0.0.1:{hook.port}/hook"
    refused = ma.put(f"/api/v1/stores/{a}/webhook", json={"url": url})
    assert refused.status_code == 422 and refused.json()["reason"] == "webhook_scheme"
    assert ma.post(f"/api/v1/stores/{a}/webhook/secret").json()["reason"] == "no_webhook"
    chain.crm.settings.webhook_allow_hosts = ["127.0.0.1"]
    chain.crm.settings.webhook_allow_http = True

    first = ma.put(f"/api/v1/stores/{a}/webhook", json={"url": url}).json()
    assert first["webhook_url"] == url and first["secret"].startswith("whsec_")
    config = ma.get(f"/api/v1/stores/{a}/config").json()
    assert config["webhook_secret_set"] and first["secret"] not in json.dumps(config)
    event = ma.post(f"/api/v1/stores/{a}/webhook/test").json()["event_id"]
    (_failed, taken) = hook.wait(2)
    assert signed_by(first["secret"], taken)
    assert json.loads(taken[1]) == {
        "type": "test",
        "id": event,
        "store_id": a,
        "created_at": json.loads(taken[1])["created_at"],
    }
    rows = deliveries(ma, a, 2)
    assert [(r["event_id"], r["attempt"], r["status_code"], r["ok"]) for r in rows] == [
        (event, 2, 204, True),
        (event, 1, 503, False),
    ]

    rotated = ma.post(f"/api/v1/stores/{a}/webhook/secret").json()["secret"]
    assert rotated != first["secret"]
    # a real alert: a VIP's visit, delivered and logged by its alert id, signed anew
    with db.transaction(chain.crm.sessions) as session:
        vip = customers.create(session, SYSTEM, {"name": "Vera Vip", "tier": "vip"}).id
        _, key = accounts.create_device(session, a, "agent", principal=SYSTEM)
    at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    visit = {
        "key": "visit-0001",
        "type": "visit",
        "customer_id": vip,
        "at": at,
        "camera": "door",
        "similarity": 0.9,
    }
    r = httpx.post(
        f"{chain.url}/api/v1/agent/events", json={"events": [visit]}, headers={"X-API-Key": key}
    )
    assert r.json()["outcomes"] == ["visit"]
    alert = hook.wait(3)[2]
    assert signed_by(rotated, alert) and not signed_by(first["secret"], alert)
    rows = deliveries(ma, a, 3)
    assert rows[0]["event_id"] == f"alert:{json.loads(alert[1])['id']}" and rows[0]["ok"]
    with chain.crm.sessions() as session:  # nothing about the customer in the log
        logged = [
            json.dumps([d.event_id, d.error, d.status_code])
            for d in session.scalars(select(WebhookDelivery))
        ]
    assert not any(vip in row or "Vera" in row for row in logged)

    mb = chain.as_("mb")
    assert mb.get(f"/api/v1/stores/{a}/webhook/deliveries").status_code == 403
    assert mb.post(f"/api/v1/stores/{a}/webhook/secret").status_code == 403
    assert ma.put(f"/api/v1/stores/{a}/webhook", json={"url": ""}).json()["secret"] is None
    assert ma.get(f"/api/v1/stores/{a}/config").json()["webhook_url"] is None
    hook.server.shutdown()


def test_last_seen_costs_no_database_work_between_writes(crm: FaceCRM) -> None:
    """A device's requests keep its "last seen" (a till sends no heartbeat) without a
    database round trip per request: one write per device every `SEEN_EVERY`, nothing
    at all in between."""
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "S1", "Store", SYSTEM)
        device, _ = accounts.create_device(session, store.id, "pos", principal=SYSTEM)
        device_id = device.id
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    t0 = datetime.now(UTC)
    event.listen(crm.engine, "before_cursor_execute", count)
    try:
        accounts.device_seen(crm.sessions, device_id, now=t0)
        written = len(statements)
        assert written > 0
        for second in range(1, 15):
            accounts.device_seen(crm.sessions, device_id, now=t0 + timedelta(seconds=second))
        assert len(statements) == written, statements[written:]
        accounts.device_seen(crm.sessions, device_id, now=t0 + timedelta(seconds=16))
        assert len(statements) > written
    finally:
        event.remove(crm.engine, "before_cursor_execute", count)
    with crm.sessions() as session:
        status = session.get(DeviceStatus, device_id)
    assert status is not None and status.last_seen_at == t0 + timedelta(seconds=16)
    assert (status.agent_version, status.queue_depth) == (None, None)


def test_the_store_agent_reports_its_version_and_queue_depth(
    chain: Chain, pipeline: FacePipeline, tmp_path: Path
) -> None:
    """The real agent's heartbeat carries what the devices page shows."""
    with db.transaction(chain.crm.sessions) as session:
        _, key = accounts.create_device(session, chain.ids["A"], "agent", principal=SYSTEM)
    agent = Agent(AgentConfig(chain.url, key, (), tmp_path / "agent"), pipeline)
    try:
        for n in range(3):
            agent.outbox.put(f"visit-{n:04d}", {"n": n})
        assert agent.heartbeat()
    finally:
        agent._client.close()
        agent.outbox.close()
    (listed,) = chain.as_("ma").get("/api/v1/devices").json()
    assert (listed["agent_version"], listed["queue_depth"]) == (__version__, 3)
