"""Security review (issue 8) for alerts: store scope, webhook SSRF, rule validation and
per-event ingestion. Real server, real databases (SQLite and PostgreSQL), real receivers."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from facecrm.agent.runner import Agent, AgentConfig
from facecrm.alerts import webhooks
from facecrm.crm import accounts, activity, customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import Alert, StoreConfig, Visit
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import free_port, serve

PASSWORD = "correct horse battery"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@dataclass
class Receiver:
    """A local webhook receiver that records every request it gets."""

    port: int
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    got: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float = 10) -> bool:
        return self.got.wait(timeout)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    record = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            record.requests.append((self.path, headers, body))
            record.got.set()
            if self.path == "/redirect":  # a receiver that tries to bounce the POST elsewhere
                self.send_response(307)
                self.send_header("Location", f"http://127.0.0.1:{record.port}/elsewhere")
            else:
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", record.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield record
    server.shutdown()
    server.server_close()


class Logged(logging.Handler):
    """Records of one logger, whatever the app did to propagation."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def logged() -> Iterator[dict[str, Logged]]:
    handlers = {name: Logged() for name in ("facecrm.alerts", "facecrm.webhooks")}
    for name, handler in handlers.items():
        logging.getLogger(name).addHandler(handler)
    yield handlers
    for name, handler in handlers.items():
        logging.getLogger(name).removeHandler(handler)


@dataclass
class Chain:
    url: str
    crm: FaceCRM
    a: str  # store A: the visit happens here
    b: str  # store B: the customer's other store
    key: str  # store A's agent
    ada: str
    alice: str  # associate in store A
    manager: str  # manager of store A (may configure it)


@pytest.fixture()
def chain(crm: FaceCRM) -> Iterator[Chain]:
    """Two stores on the parametrised database; Ada has history in both."""
    with db.transaction(crm.sessions) as session:
        a = accounts.create_store(session, "A", "Store A", SYSTEM).id
        b = accounts.create_store(session, "B", "Store B", SYSTEM).id
        _, key = accounts.create_device(session, a, "agent", principal=SYSTEM)
        accounts.create_staff(session, "alice", PASSWORD, "associate", [a], principal=SYSTEM)
        accounts.create_staff(session, "maria", PASSWORD, "manager", [a], principal=SYSTEM)
        ada = customers.create(session, SYSTEM, {"name": "Ada Lovelace", "tier": "vip"}).id
    with db.transaction(crm.sessions) as session:
        activity.add_interest(session, SYSTEM, ada, a, "A-scarf", out_of_stock=True)
        activity.add_feedback(session, SYSTEM, ada, a, "A-slow till", 2)
        activity.add_interest(session, SYSTEM, ada, b, "B-secret handbag", out_of_stock=True)
        activity.add_feedback(session, SYSTEM, ada, b, "B-private complaint", 1)
        # a visit in B long ago: "back after N days" would reveal it to store A
        activity.record_visit(session, SYSTEM, ada, b, "staff", None, NOW - timedelta(days=200))
    with serve(create_app(crm)) as url:
        yield Chain(url, crm, a, b, key, ada, token(url, "alice"), token(url, "maria"))


def token(url: str, username: str) -> str:
    response = httpx.post(
        f"{url}/api/v1/auth/token", data={"username": username, "password": PASSWORD}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def visit(key: str, customer: str, at: datetime = NOW) -> dict[str, Any]:
    return {
        "key": key,
        "type": "visit",
        "customer_id": customer,
        "at": at.isoformat(),
        "camera": "door",
        "similarity": 0.97,
    }


def post_events(chain: Chain, *events: object) -> httpx.Response:
    return httpx.post(
        f"{chain.url}/api/v1/agent/events",
        json={"events": list(events)},
        headers={"X-API-Key": chain.key},
        timeout=30,
    )


def put_config(chain: Chain, body: dict[str, Any]) -> httpx.Response:
    return httpx.put(
        f"{chain.url}/api/v1/stores/{chain.a}/config",
        json=body,
        headers={"Authorization": f"Bearer {chain.manager}"},
    )


def stored_config(chain: Chain) -> tuple[object, str | None]:
    with chain.crm.sessions() as session:
        row = session.execute(
            select(StoreConfig.rules, StoreConfig.webhook_url).where(
                StoreConfig.store_id == chain.a
            )
        ).one()
    return row.rules, row.webhook_url


def allow_local_receiver(chain: Chain, host: str = "127.0.0.1") -> None:
    """The administrator's allow-list, as a deployment with an internal receiver sets it."""
    chain.crm.settings.webhook_allow_hosts = [host]
    chain.crm.settings.webhook_allow_http = True


def plant_webhook(chain: Chain, url: str) -> None:
    """A config row as written directly (e.g. before URL validation existed)."""
    with db.transaction(chain.crm.sessions) as session:
        session.merge(
            StoreConfig(store_id=chain.a, rules={}, webhook_url=url, webhook_secret="s" * 32)
        )


class Stream:
    """Reads one SSE alert from a live stream (API bearer token or console cookie)."""

    def __init__(self, client: httpx.Client, path: str) -> None:
        self.client, self.path = client, path
        self.ready = threading.Event()
        self.payloads: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(20), f"{path} did not connect"

    def _run(self) -> None:
        with self.client.stream("GET", self.path) as response:
            for line in response.iter_lines():
                if line.startswith(": connected"):
                    self.ready.set()
                elif line.startswith("data: "):
                    self.payloads.append(json.loads(line.removeprefix("data: ")))
                    return

    def payload(self) -> dict[str, Any]:
        self.thread.join(20)
        assert self.payloads, f"no alert on {self.path}"
        return self.payloads[0]


@contextmanager
def console_client(url: str, username: str) -> Iterator[httpx.Client]:
    """A client logged in to the console through its log-in form."""
    with httpx.Client(base_url=url, timeout=30) as client:
        client.get("/console/login").raise_for_status()
        csrf = client.cookies["facecrm_csrf"]
        login = client.post(
            "/console/login", data={"username": username, "password": PASSWORD, "csrf": csrf}
        )
        assert login.status_code == 303, login.text
        yield client


# -- item 4: an alert in store A carries store A's data only ---------------------------


def test_alert_in_store_a_has_none_of_store_b_data(chain: Chain, receiver: Receiver) -> None:
    allow_local_receiver(chain)
    plant_webhook(chain, f"http://127.0.0.1:{receiver.port}/hook")
    bearer = {"Authorization": f"Bearer {chain.alice}"}
    with (
        httpx.Client(base_url=chain.url, headers=bearer, timeout=30) as api,
        console_client(chain.url, "alice") as console,
    ):
        api_stream = Stream(api, "/api/v1/alerts/stream")
        console_stream = Stream(console, "/console/alerts/stream")
        response = post_events(chain, visit("scope-0001", chain.ada))
        assert response.status_code == 200, response.text
        assert response.json()["outcomes"] == ["visit"]
        listed = api.get("/api/v1/alerts").json()
        seen = {
            "api": listed[0],
            "api stream": api_stream.payload(),
            "console stream": console_stream.payload(),
        }
    assert receiver.wait(), "the webhook was not delivered"
    seen["webhook"] = json.loads(receiver.requests[0][2])
    assert len(listed) == 1
    for channel, payload in seen.items():
        dumped = json.dumps(payload)
        assert "B-" not in dumped, f"store B's data in the {channel} alert: {dumped}"
        assert "back after" not in payload["message"], channel  # B's visit is not A's business
        assert "A-scarf" in payload["message"] and "A-slow till" in payload["message"], channel
        assert payload["store_id"] == chain.a and payload["customer_name"] == "Ada Lovelace"
    with chain.crm.sessions() as session:
        (alert,) = session.scalars(select(Alert)).all()
    # three rules fired: more than the old 40-character column held (PostgreSQL enforced it)
    assert alert.rule == "vip_arrival,out_of_stock_return,unresolved_feedback"
    assert "unresolved feedback: A-slow till" in alert.message


# -- item 6: the store webhook cannot reach the server's own network --------------------

BAD_WEBHOOKS = [
    ("http://127.0.0.1:8000/hook", "webhook_scheme"),
    ("https://127.0.0.1/hook", "webhook_address"),
    ("https://localhost/hook", "webhook_address"),
    ("https://[::1]/hook", "webhook_address"),
    ("https://[::ffff:127.0.0.1]/hook", "webhook_address"),
    ("https://169.254.169.254/latest/meta-data/", "webhook_address"),
    ("https://metadata.google.internal/computeMetadata/v1/", "webhook_address"),
    ("https://10.0.0.1/hook", "webhook_address"),
    ("https://192.168.1.10/hook", "webhook_address"),
    ("https://0.0.0.0/hook", "webhook_address"),
    ("https://224.0.0.1/hook", "webhook_address"),
    ("http://2130706433/", "webhook_scheme"),
    ("https://2130706433/", "webhook_address"),
    ("https://0x7f.1/", "webhook_address"),
    ("https://intranet/hook", "webhook_address"),
    ("https://user:pass@hooks.example.com/hook", "webhook_credentials"),
    ("https://hooks.example.com/hook\r\nX-Injected: 1", "webhook_url_malformed"),
    ("https://hooks.example.com/h\nook", "webhook_url_malformed"),
    ("http://hooks.example.com/hook", "webhook_scheme"),
    ("ftp://hooks.example.com/hook", "webhook_scheme"),
    ("https:///hook", "webhook_url_malformed"),
]


def test_bad_webhook_urls_are_refused_at_put_and_change_nothing(chain: Chain) -> None:
    good = {"rules": {"long_absence": {"days": 30}}, "webhook_secret": "s" * 32}
    first = put_config(chain, {**good, "webhook_url": "https://hooks.example.com/hook"})
    assert first.status_code == 200, first.text
    before = stored_config(chain)
    assert before == ({"long_absence": {"days": 30}}, "https://hooks.example.com/hook")
    wrong = []
    for url, reason in BAD_WEBHOOKS:
        response = put_config(chain, {"rules": {}, "webhook_url": url, "webhook_secret": "t" * 32})
        got = response.json().get("reason") if response.status_code == 422 else None
        if response.status_code != 422 or got != reason:
            wrong.append((url, response.status_code, got))
        assert stored_config(chain) == before, f"{url!r} changed the config"
    assert wrong == []


def test_a_stored_url_to_a_local_host_is_refused_at_send_time(
    chain: Chain, receiver: Receiver, logged: dict[str, Logged]
) -> None:
    """A row written before validation: `localhost` (127.0.0.1) is refused when sending."""
    log = logged["facecrm.webhooks"].messages
    chain.crm.settings.webhook_allow_http = True  # the scheme is not what is tested here
    plant_webhook(chain, f"http://localhost:{receiver.port}/hook")
    assert post_events(chain, visit("ssrf-0001", chain.ada)).json()["outcomes"] == ["visit"]
    deadline = time.monotonic() + 10
    while not any("webhook not sent" in m for m in log):
        assert time.monotonic() < deadline, "the delivery was not refused"
        time.sleep(0.02)
    (refusal,) = [m for m in log if "webhook not sent" in m]
    assert "webhook_address" in refusal and "Ada" not in refusal
    # the control: the same row is delivered once an administrator allows the host
    allow_local_receiver(chain, "localhost")
    later = visit("ssrf-0002", chain.ada, NOW + timedelta(hours=5))
    assert post_events(chain, later).json()["outcomes"] == ["visit"]
    assert receiver.wait()
    assert len(receiver.requests) == 1 and json.loads(receiver.requests[0][2])["message"]


@pytest.fixture()
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """DNS for made-up names (`answers`), the real resolver for everything else."""
    real = socket.getaddrinfo
    answers: dict[str, list[str]] = {}
    asked: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in answers:
            asked.append(name)
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port or 0)))
                for ip in answers[name]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return {"answers": answers, "asked": asked}  # type: ignore[dict-item]


def test_names_resolving_to_private_addresses_are_refused(
    resolver: dict[str, Any], receiver: Receiver
) -> None:
    policy = webhooks.Policy(allow_http=True)
    resolver["answers"]["rebind.example.com"] = ["127.0.0.1"]
    resolver["answers"]["mixed.example.com"] = ["93.184.215.14", "10.1.2.3"]
    for host in ("rebind.example.com", "mixed.example.com"):
        with pytest.raises(webhooks.WebhookRefused) as refused:
            webhooks.vet(f"http://{host}:{receiver.port}/hook", policy)
        assert refused.value.reason == "webhook_address"
        url = f"http://{host}:{receiver.port}/hook"
        assert webhooks.send(url, "s" * 32, {"x": 1}, policy, attempts=1) is False
    assert receiver.requests == []


def test_delivery_goes_to_the_vetted_address_and_follows_no_redirect(
    resolver: dict[str, Any], receiver: Receiver
) -> None:
    """The name is resolved once, by the vetting; the request goes to that address with
    the original Host header (a second DNS answer cannot redirect it)."""
    resolver["answers"]["hooks.store.test"] = ["127.0.0.1"]
    policy = webhooks.Policy(allow_hosts=frozenset({"hooks.store.test"}), allow_http=True)
    url = f"http://hooks.store.test:{receiver.port}/hook"
    assert webhooks.send(url, "s" * 32, {"x": 1}, policy, attempts=1) is True
    assert resolver["asked"] == ["hooks.store.test"]
    ((path, headers, _),) = receiver.requests
    assert path == "/hook" and headers["host"] == f"hooks.store.test:{receiver.port}"
    bounce = f"http://hooks.store.test:{receiver.port}/redirect"
    assert webhooks.send(bounce, "s" * 32, {"x": 1}, policy, attempts=1) is False
    assert [p for p, _, _ in receiver.requests] == ["/hook", "/redirect"]  # not /elsewhere


# -- item 7: rule settings are validated; one bad event or rule blocks nothing ----------

BAD_RULES: list[tuple[object, list[str | int]]] = [
    ({"long_absence": {"days": "abc"}}, ["long_absence", "days"]),
    ({"long_absence": {"days": 0}}, ["long_absence", "days"]),
    ({"long_absence": {"days": 10**9}}, ["long_absence", "days"]),
    ({"long_absence": {"days": True}}, ["long_absence", "days"]),
    ({"long_absence": {"days": 90, "hours": 2}}, ["long_absence", "hours"]),
    ({"long_absence": []}, ["long_absence"]),
    ({"vip_arrival": {"tiers": ["platinum"]}}, ["vip_arrival", "tiers", 0]),
    ({"vip_arrival": {"tiers": "vip"}}, ["vip_arrival", "tiers"]),
    ({"vip_arrival": {"enabled": "yes"}}, ["vip_arrival", "enabled"]),
    ({"birthday": {"enabled": True}}, ["birthday"]),
    ("all", []),
]


def test_bad_rule_settings_are_refused_with_their_path(chain: Chain) -> None:
    assert put_config(chain, {"rules": {"vip_arrival": {"enabled": False}}}).status_code == 200
    before = stored_config(chain)
    for rules, path in BAD_RULES:
        response = put_config(chain, {"rules": rules})
        assert response.status_code == 422, (rules, response.text)
        locations = [e["loc"] for e in response.json()["errors"]]
        assert ["body", "rules", *path] in locations, (rules, locations)
        assert stored_config(chain) == before, rules


@pytest.mark.parametrize(
    "planted",
    ['{"long_absence": {"days": "abc"}, "birthday": 1}', '"abc"', "[1, 2]", "not json {"],
)
def test_a_bad_rule_row_in_the_database_does_not_stop_visits(
    chain: Chain, planted: str, logged: dict[str, Logged]
) -> None:
    postgres = chain.crm.engine.dialect.name == "postgresql"
    if planted == "not json {" and postgres:
        pytest.skip("a PostgreSQL json column cannot hold malformed JSON")
    plant_webhook(chain, "https://hooks.example.com/hook")  # the row exists
    value = "CAST(:raw AS JSON)" if postgres else ":raw"
    with chain.crm.engine.begin() as connection:
        connection.execute(
            text(f"UPDATE store_configs SET rules = {value} WHERE store_id = :store"),
            {"raw": planted, "store": chain.a},
        )
    response = post_events(chain, visit("rules-001", chain.ada))
    assert response.status_code == 200, response.text
    assert response.json()["outcomes"] == ["visit"]
    with chain.crm.sessions() as session:
        (alert,) = session.scalars(select(Alert)).all()
    assert alert.rule.startswith("vip_arrival")  # the valid rules still work
    assert "back after" not in alert.message
    warnings = [m for m in logged["facecrm.alerts"].messages if "invalid alert rule" in m]
    assert warnings, "the broken setting was not logged"
    # no values, no people (the store's id is left out: its hex may hold "abc" by chance)
    assert not [w for w in warnings if "Ada" in w or "abc" in w.replace(chain.a, "")]
    # a manager can repair the row through the API
    repaired = put_config(chain, {"rules": {"long_absence": {"days": 30}}})
    assert repaired.status_code == 200, repaired.text
    assert stored_config(chain)[0] == {"long_absence": {"days": 30}}


def test_a_malformed_event_is_rejected_alone(chain: Chain) -> None:
    with db.transaction(chain.crm.sessions) as session:
        bo = customers.create(session, SYSTEM, {"name": "Bo"}).id
    response = post_events(
        chain,
        visit("batch-001", chain.ada),
        {"key": "batch-002", "type": "visit", "customer_id": bo, "at": "yesterday"},
        42,
        {**visit("batch-004", bo), "similarity": 7},
        visit("batch-005", bo),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outcomes"] == ["visit", "rejected", "rejected", "rejected", "visit"]
    assert {e["index"] for e in body["errors"]} == {1, 2, 3}
    assert ["at"] in [e["loc"] for e in body["errors"] if e["index"] == 1]
    assert "yesterday" not in response.text  # errors do not echo the input
    with chain.crm.sessions() as session:
        stored = {
            v.customer_id for v in session.scalars(select(Visit).where(Visit.store_id == chain.a))
        }
    assert stored == {chain.ada, bo}


def test_the_agent_queue_moves_past_a_malformed_event(
    chain: Chain, pipeline: FacePipeline, tmp_path: Path
) -> None:
    agent = Agent(
        AgentConfig(
            server=chain.url, api_key=chain.key, cameras=(), data_dir=tmp_path, realtime=False
        ),
        pipeline,
    )
    agent.outbox.put("poison-01", {"key": "poison-01", "type": "visit", "at": "never"})
    agent.outbox.put("queue-002", visit("queue-002", chain.ada))
    assert agent.deliver_once() == 2
    assert agent.outbox.depth() == 0
    assert agent.metrics.counter("facecrm_agent_events_rejected_total") == 1
    agent.outbox.put("queue-003", visit("queue-003", chain.ada, NOW + timedelta(hours=5)))
    assert agent.deliver_once() == 1
    with chain.crm.sessions() as session:
        assert len(session.scalars(select(Visit).where(Visit.store_id == chain.a)).all()) == 2
    agent.outbox.close()
