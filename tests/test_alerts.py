"""Alert rules, visit windows, idempotency, webhooks and metrics."""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy import select

from facecrm.alerts import rules, webhooks
from facecrm.alerts.service import AlertService, VisitEvent
from facecrm.config import Settings
from facecrm.crm import accounts, activity, db
from facecrm.crm.authz import SYSTEM, Principal
from facecrm.crm.errors import ConflictError
from facecrm.crm.models import Alert, AuditEvent, Shift, StoreConfig, Visit
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import free_port, serve

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


class TestRules:
    def base(self, **changes: object) -> rules.VisitContext:
        values: dict[str, object] = {
            "name": "Ada",
            "tier": "standard",
            "at": NOW,
            "previous_visit": NOW - timedelta(days=3),
        }
        values.update(changes)
        return rules.VisitContext(**values)  # type: ignore[arg-type]

    def test_nothing_worth_an_alert(self) -> None:
        assert rules.evaluate(self.base()) is None

    def test_each_rule(self) -> None:
        vip = rules.evaluate(self.base(tier="vip"))
        assert vip is not None and vip.rules == ("vip_arrival",)
        wanted = rules.evaluate(self.base(wanted=[("boots", True), ("scarf", False)]))
        assert wanted is not None and "still out of stock" in wanted.message
        assert "back in stock now" in wanted.message
        feedback = rules.evaluate(self.base(open_feedback=["long queue"]))
        assert feedback is not None and "long queue" in feedback.message
        absent = rules.evaluate(self.base(previous_visit=NOW - timedelta(days=200)))
        assert absent is not None and "back after 200 days" in absent.message
        advisor = rules.evaluate(self.base(advisor_on_shift="s1", advisor_name="Bo"))
        assert advisor is not None and advisor.assignee_id == "s1"

    def test_store_configuration(self) -> None:
        config = {"vip_arrival": {"enabled": False}, "long_absence": {"days": 2}}
        draft = rules.evaluate(self.base(tier="vip"), config)
        assert draft is not None and draft.rules == ("long_absence",)


@pytest.fixture()
def chain(settings: Settings, pipeline: FacePipeline) -> Iterator[dict]:
    crm = FaceCRM(settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "Store A", SYSTEM)
        device, key = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
        advisor = accounts.create_staff(
            session, "bo", "advisor-pass", "associate", [store.id], principal=SYSTEM
        )
        session.add(Shift(staff_id=advisor.id, store_id=store.id))
        principal = accounts.device_principal(device)
        from facecrm.crm import customers

        ada = customers.create(
            session, SYSTEM, {"name": "Ada", "tier": "vip", "preferred_advisor_id": advisor.id}
        )
        ids = {"store": store.id, "ada": ada.id, "advisor": advisor.id, "key": key}
    with db.transaction(crm.sessions) as session:
        activity.add_feedback(session, SYSTEM, ids["ada"], ids["store"], "long queue", 2)
    yield {"crm": crm, "device": principal, **ids}
    crm.engine.dispose()


def event(key: str, customer: str, at: datetime) -> VisitEvent:
    return VisitEvent(key, customer, at, "cam", 0.97)


def test_visit_window_idempotency_and_routing(chain: dict) -> None:
    service = AlertService(chain["crm"])
    ada, device = chain["ada"], chain["device"]
    outcomes = service.ingest(
        device,
        [
            event("key-0000001", ada, NOW),
            event("key-0000002", ada, NOW + timedelta(minutes=1)),  # another camera, same visit
            event("key-0000001", ada, NOW),  # a resend
            event("key-0000003", "erased-customer", NOW),
            event("key-0000004", ada, NOW + timedelta(hours=5)),  # a later visit
        ],
    )
    assert outcomes == ["visit", "same_visit", "duplicate", "ignored", "visit"]
    with chain["crm"].sessions() as session:
        visits = session.scalars(select(Visit)).all()
        alerts = session.scalars(select(Alert).order_by(Alert.id)).all()
        raised = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "alert").order_by(AuditEvent.id)
        ).first()
    assert len(visits) == 2 and len(alerts) == 2
    fired = {"vip_arrival", "unresolved_feedback", "preferred_advisor"}
    assert raised is not None and set(raised.detail["rules"]) == fired
    assert set(alerts[0].rule.split(",")) == fired  # 82 characters fit since 0007
    assert alerts[0].assignee_id == chain["advisor"]
    assert service.metrics.counter("facecrm_alerts_sent_total") == 2


def test_signed_webhook(chain: dict) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    # a local receiver: allowed by the administrator's setting, not by default (see SSRF tests)
    chain["crm"].settings.webhook_allow_hosts = ["127.0.0.1"]
    chain["crm"].settings.webhook_allow_http = True
    receiver = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    secret = "s" * 32
    with db.transaction(chain["crm"].sessions) as session:
        session.add(
            StoreConfig(
                store_id=chain["store"],
                rules={},
                webhook_url=f"http://127.0.0.1:{port}/hook",
                webhook_secret=secret,
            )
        )
    AlertService(chain["crm"]).ingest(chain["device"], [event("key-0000009", chain["ada"], NOW)])
    for _ in range(100):
        if received:
            break
        threading.Event().wait(0.05)
    receiver.shutdown()
    (headers, body) = received[0]
    expected = webhooks.signature(secret, headers["x-facecrm-timestamp"], body)
    assert hmac.compare_digest(headers["x-facecrm-signature"], expected)
    assert json.loads(body)["customer_id"] == chain["ada"]


def test_events_endpoint_health_and_metrics(chain: dict) -> None:
    with serve(create_app(chain["crm"])) as url:
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
        body = {
            "events": [
                {
                    "key": "key-0000077",
                    "type": "visit",
                    "customer_id": chain["ada"],
                    "at": NOW.isoformat(),
                    "camera": "c",
                    "similarity": 0.96,
                }
            ]
        }
        headers = {"X-API-Key": chain["key"]}
        first = httpx.post(f"{url}/api/v1/agent/events", json=body, headers=headers)
        again = httpx.post(f"{url}/api/v1/agent/events", json=body, headers=headers)
        assert first.json() == {"outcomes": ["visit"], "errors": []}
        assert again.json() == {"outcomes": ["duplicate"], "errors": []}
        text = httpx.get(f"{url}/metrics").text
    assert 'facecrm_agent_events_total{outcome="visit"} 1.0' in text
    assert 'facecrm_agent_events_total{outcome="duplicate"} 1.0' in text
    assert "facecrm_alerts_sent_total 1.0" in text


def test_staff_claiming_at_once_get_one_claim(crm: FaceCRM) -> None:
    """Six associates claim one alert at the same moment: one has it, five get 409 (the
    claim read "unclaimed" and wrote without a lock, so all six were told they had it)."""
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "Store A", SYSTEM)
        device, _ = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
        from facecrm.crm import customers

        ada = customers.create(session, SYSTEM, {"name": "Ada", "tier": "vip"}).id
        staff = [
            accounts.staff_principal(
                accounts.create_staff(
                    session, f"s{i}", "advisor-pass", "associate", [store.id], principal=SYSTEM
                )
            )
            for i in range(6)
        ]
        agent = accounts.device_principal(device)
    service = AlertService(crm)
    assert service.ingest(agent, [event("key-0000001", ada, datetime.now(UTC))]) == ["visit"]
    with crm.sessions() as session:
        alert_id = session.scalars(select(Alert.id)).one()
    barrier = threading.Barrier(len(staff))

    def claim(principal: Principal) -> str:
        barrier.wait()
        try:
            return service.claim(principal, alert_id).claimed_by or ""
        except ConflictError:
            return "409"

    with ThreadPoolExecutor(len(staff)) as pool:
        answers = list(pool.map(claim, staff))
    assert answers.count("409") == len(staff) - 1, answers
    (winner,) = [a for a in answers if a != "409"]
    with crm.sessions() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None and alert.claimed_by == winner
        claims = session.scalars(select(AuditEvent).where(AuditEvent.action == "alert_claim")).all()
    assert [e.actor for e in claims] == [f"staff:{p.name}" for p in staff if p.id == winner]
