"""Alerts staff can act on (issue 11, item 5) and the POS look-up by loyalty id (item 7).

On SQLite and PostgreSQL: the any-arrival rule, reasons in plain words, camera and store
time, the cooldown, "Not this person" (the visit leaves the history and the rules, the
dispute report, the audit trail), the history with paging, `facecrm disputes export` read
by `facecrm eval --disputes`, and who may look a customer up by loyalty id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import select

from facecrm.alerts.service import AlertService, VisitEvent
from facecrm.crm import accounts, activity, cards, customers, db, disputes
from facecrm.crm.authz import SYSTEM
from facecrm.crm.models import AuditEvent, Visit
from facecrm.crm.service import FaceCRM
from facecrm.eval import disputes as eval_disputes
from facecrm.gallery.threshold import Calibration, load_calibration
from facecrm.server import create_app

from server import serve

if TYPE_CHECKING:
    from conftest import Cli

PASSWORD = "correct horse battery"
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


@dataclass
class Shop:
    crm: FaceCRM
    service: AlertService
    store: str
    other: str
    device: object
    agent_key: str
    pos_key: str
    ada: str  # standard tier: alerts only through any_arrival
    alice: str


@pytest.fixture()
def shop(crm: FaceCRM) -> Iterator[Shop]:
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "P", "Paris", SYSTEM).id
        other = accounts.create_store(session, "L", "Lyon", SYSTEM).id
        device, agent_key = accounts.create_device(session, store, "agent", principal=SYSTEM)
        _, pos_key = accounts.create_device(session, store, "pos", principal=SYSTEM)
        alice = accounts.create_staff(
            session, "alice", PASSWORD, "associate", [store], principal=SYSTEM
        ).id
        accounts.create_staff(session, "bob", PASSWORD, "associate", [other], principal=SYSTEM)
        accounts.create_staff(session, "mona", PASSWORD, "manager", [store], principal=SYSTEM)
        ada = customers.create(
            session, SYSTEM, {"name": "Ada Lovelace", "loyalty_id": "L-1815", "tier": "gold"}
        ).id
        principal = accounts.device_principal(device)
    service = AlertService(crm)
    yield Shop(crm, service, store, other, principal, agent_key, pos_key, ada, alice)


def staff(shop: Shop, name: str = "alice"):  # type: ignore[no-untyped-def]
    with shop.crm.sessions() as session:
        return accounts.staff_principal(accounts.find_staff(session, name))


def arrive(shop: Shop, key: str, at: datetime, camera: str = "door") -> str:
    (outcome,) = shop.service.ingest(
        shop.device,  # type: ignore[arg-type]
        [VisitEvent(key, shop.ada, at, camera, 0.71)],
    )
    return outcome


def configure(shop: Shop, rules: dict[str, object], time_zone: str | None = None) -> None:
    shop.service.configure_store(SYSTEM, shop.store, rules, None, None, time_zone)


QUIET = {"vip_arrival": {"enabled": False}}


def test_any_arrival_reasons_camera_and_store_time(shop: Shop) -> None:
    alice = staff(shop)
    configure(shop, QUIET)
    assert arrive(shop, "k-00000001", NOW) == "visit"
    assert shop.service.open_alerts(alice) == []  # any_arrival is off by default

    configure(shop, {**QUIET, "any_arrival": {"enabled": True}}, "Europe/Paris")
    assert arrive(shop, "k-00000002", NOW + timedelta(hours=6), "rtsp://cam:secret@10.0.0.7/door")
    (alert,) = shop.service.open_alerts(alice)
    assert alert.rule == "any_arrival"
    assert alert.reasons == ("An opted-in customer has arrived (2nd visit to this store).",)
    assert alert.camera == "rtsp://10.0.0.7/door"  # never the camera's password
    seen = NOW + timedelta(hours=6)
    assert alert.seen_at == seen and alert.time_zone == "Europe/Paris"
    local = datetime.fromisoformat(alert.local_time or "")
    assert local == seen and local.utcoffset() in {timedelta(hours=1), timedelta(hours=2)}
    assert alert.has_photo is False  # no kept photo: none shown
    with pytest.raises(Exception, match="time zone"):
        configure(shop, QUIET, "Mars/Olympus")


def test_one_alert_per_visit_with_a_cooldown(shop: Shop) -> None:
    alice = staff(shop)
    configure(shop, {"any_arrival": {"enabled": True}})
    assert arrive(shop, "k-00000011", NOW - timedelta(hours=9)) == "visit"
    assert arrive(shop, "k-00000012", NOW - timedelta(hours=9, minutes=-5)) == "same_visit"
    # a long stay: a second visit after the 2-hour window, inside the 4-hour cooldown
    assert arrive(shop, "k-00000013", NOW - timedelta(hours=6)) == "visit"
    assert len(shop.service.open_alerts(alice)) == 1
    assert arrive(shop, "k-00000014", NOW) == "visit"  # after the cooldown
    assert len(shop.service.open_alerts(alice)) == 2
    shop.crm.settings.alert_cooldown_minutes = 0
    assert arrive(shop, "k-00000015", NOW + timedelta(hours=3)) == "visit"
    assert len(shop.service.open_alerts(alice)) == 3


def test_not_this_person_leaves_the_history_and_the_rules(shop: Shop) -> None:
    """A disputed visit is no visit of the customer's: not on the card, not in the visit
    listing, not counted by the rules (visit count, last visit) -- and it is reported."""
    alice = staff(shop)
    configure(shop, {**QUIET, "any_arrival": {"enabled": True}, "long_absence": {"days": 30}})
    assert arrive(shop, "k-00000021", NOW - timedelta(days=100)) == "visit"
    (old,) = shop.service.open_alerts(alice)
    shop.service.acknowledge(alice, old.id)
    assert arrive(shop, "k-00000022", NOW - timedelta(days=2)) == "visit"
    (alert,) = shop.service.open_alerts(alice)
    assert "long_absence" in alert.rule

    closed = shop.service.dispute(alice, alert.id)
    assert closed.outcome == "disputed" and closed.closed_by == shop.alice
    assert shop.service.open_alerts(alice) == []
    with pytest.raises(Exception, match="already disputed"):
        shop.service.dispute(alice, alert.id)
    with shop.crm.sessions() as session:
        visits = session.scalars(select(Visit).order_by(Visit.at)).all()
        assert [v.disputed for v in visits] == [False, True]
        card = cards.card(session, alice, shop.ada)
        assert [v.at for v in card.recent_visits] == [NOW - timedelta(days=100)]
        listed = activity.visits(session, alice, activity.Filters(customer_id=shop.ada))
        assert len(listed) == 1
        every = activity.Filters(customer_id=shop.ada, include_disputed=True)
        assert len(activity.visits(session, alice, every)) == 2
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "match_dispute")
        ).all()
        assert event.customer_id == shop.ada and event.store_id == shop.store
        assert event.detail["similarity"] == pytest.approx(0.71)

    # the rules still see 100 days of absence and one visit before this one
    assert arrive(shop, "k-00000023", NOW) == "visit"
    (again,) = shop.service.open_alerts(alice)
    assert "Back after 100 days away" in " ".join(again.reasons)

    quiet = {**QUIET, "long_absence": {"enabled": False}}
    configure(shop, {**quiet, "any_arrival": {"enabled": True}})
    shop.service.dismiss(alice, again.id)
    shop.crm.settings.alert_cooldown_minutes = 0
    assert arrive(shop, "k-00000024", NOW + timedelta(hours=3)) == "visit"
    (counted,) = shop.service.open_alerts(alice)
    assert counted.reasons == ("An opted-in customer has arrived (3rd visit to this store).",)

    history = shop.service.history(alice)
    assert [h.outcome for h in history] == ["dismissed", "disputed", "greeted"]
    assert [h.id for h in shop.service.history(alice, limit=1, offset=1)] == [alert.id]

    manager = staff(shop, "mona")
    with db.transaction(shop.crm.sessions) as session:
        (row,) = disputes.report(session, manager, shop.store)
        line = disputes.record(row)
    assert line["customer_id"] == shop.ada and line["camera"] == "door"
    assert line["similarity"] == pytest.approx(0.71) and line["source"] == "alert"
    assert set(line) == {
        "store_id",
        "customer_id",
        "source",
        "camera",
        "matched_at",
        "disputed_at",
        "similarity",
        "threshold",
    }


def test_a_lookup_answer_can_be_disputed_once_by_who_asked(shop: Shop) -> None:
    alice, bob = staff(shop), staff(shop, "bob")
    settings = shop.crm.settings
    ref = disputes.lookup_ref(settings, alice, shop.ada, 0.66, shop.store)
    assert ref is not None
    with (
        pytest.raises(Exception, match="only who looked"),
        db.transaction(shop.crm.sessions) as session,
    ):
        disputes.dispute_lookup(session, bob, settings, ref, 0.6)
    forged = ref[:-4] + ("AAAA" if not ref.endswith("AAAA") else "BBBB")
    with (
        pytest.raises(Exception, match="cannot be disputed"),
        db.transaction(shop.crm.sessions) as session,
    ):
        disputes.dispute_lookup(session, alice, settings, forged, 0.6)
    old = disputes.lookup_ref(settings, alice, shop.ada, 0.66, shop.store, NOW)
    with pytest.raises(Exception, match="30 minutes"), db.transaction(shop.crm.sessions) as session:
        disputes.dispute_lookup(session, alice, settings, old or "", 0.6)
    with db.transaction(shop.crm.sessions) as session:
        done = disputes.dispute_lookup(session, alice, settings, ref, 0.6)
        assert (done.source, done.similarity, done.camera) == ("lookup", 0.66, "phone")
    with (
        pytest.raises(Exception, match="already been disputed"),
        db.transaction(shop.crm.sessions) as session,
    ):
        disputes.dispute_lookup(session, alice, settings, ref, 0.6)


def test_disputes_export_feeds_eval(shop: Shop, cli: Cli, tmp_path: Path) -> None:
    """The export is what `facecrm eval --disputes` reads; calibrating with it puts the
    threshold above every disputed score."""
    configure(shop, {"any_arrival": {"enabled": True}})
    arrive(shop, "k-00000031", NOW)
    (alert,) = shop.service.open_alerts(SYSTEM)
    shop.service.dispute(staff(shop), alert.id)
    out = tmp_path / "disputes.jsonl"
    env = {"FACECRM_DATABASE_URL": shop.crm.settings.resolved_database_url}
    done = cli(shop.crm.settings.data_dir, "disputes", "export", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    header, line = (json.loads(x) for x in out.read_text().splitlines())
    assert header["format"] == "facecrm-disputes/1"
    assert set(header["stores"]) == {shop.store, shop.other}
    assert line["customer_id"] == shop.ada and line["similarity"] == pytest.approx(0.71)
    assert out.stat().st_mode & 0o777 == 0o600

    read = eval_disputes.read(out)
    assert read.count == 1 and read.scores == [pytest.approx(0.71)]
    model = header["model_id"]
    summary = eval_disputes.summary(read, model, 0.6, genuine=[0.65, 0.9])
    assert summary["accepted_at_threshold"] == 1
    assert summary["threshold_with_disputes"] == pytest.approx(0.71 + 1e-6)
    assert summary["genuine_rejected_with_disputes"] == 1
    with pytest.raises(ValueError, match="not comparable"):
        eval_disputes.summary(read, "another-model", 0.6, [])

    calibration = tmp_path / "cal.json"
    Calibration.fit(model, [0.1, 0.3, 0.5], [0.9]).save(calibration)
    assert eval_disputes.raise_floor(calibration, model, read) == pytest.approx(0.71)
    raised = load_calibration(model, path=calibration)
    assert raised.threshold(0.001) > 0.71
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "something else"}\n')
    with pytest.raises(ValueError, match="not a dispute export"):
        eval_disputes.read(bad)


# -- over HTTP: history paging, and the POS look-up's authorization matrix -----------------


def token(url: str, username: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/v1/auth/token", data={"username": username, "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_history_over_the_api(shop: Shop) -> None:
    configure(shop, {"any_arrival": {"enabled": True}})
    shop.crm.settings.alert_cooldown_minutes = 0
    for n in range(3):
        arrive(shop, f"k-0000004{n}", NOW + timedelta(hours=3 * n))
    with serve(create_app(shop.crm)) as url:
        alice, bob = token(url, "alice"), token(url, "bob")
        ids = [a["id"] for a in httpx.get(f"{url}/api/v1/alerts", headers=alice).json()]
        assert len(ids) == 3
        httpx.post(f"{url}/api/v1/alerts/{ids[0]}/ack", headers=alice).raise_for_status()
        httpx.post(f"{url}/api/v1/alerts/{ids[1]}/dismiss", headers=alice).raise_for_status()
        r = httpx.post(f"{url}/api/v1/alerts/{ids[2]}/dispute", headers=alice)
        assert r.json()["outcome"] == "disputed"
        assert httpx.post(f"{url}/api/v1/alerts/{ids[1]}/ack", headers=alice).status_code == 409
        page = httpx.get(f"{url}/api/v1/alerts/history?limit=2", headers=alice).json()
        assert [a["id"] for a in page] == [ids[2], ids[1]]
        rest = httpx.get(f"{url}/api/v1/alerts/history?limit=2&offset=2", headers=alice)
        assert [a["id"] for a in rest.json()] == [ids[0]]
        assert httpx.get(f"{url}/api/v1/alerts/history", headers=bob).json() == []
        other = httpx.get(f"{url}/api/v1/alerts/history?store_id={shop.store}", headers=bob)
        assert other.status_code == 403
        assert httpx.post(f"{url}/api/v1/alerts/{ids[0]}/dispute", headers=bob).status_code == 404
        report = f"{url}/api/v1/stores/{shop.store}/disputes"
        assert httpx.get(report, headers=alice).status_code == 403  # associates: no report
        (row,) = httpx.get(report, headers=token(url, "mona")).json()
        assert row["alert_id"] == ids[2] and row["camera"] == "door"


def test_pos_lookup_by_loyalty_id(shop: Shop) -> None:
    shop.crm.settings.pos_lookup_per_minute = 7
    with serve(create_app(shop.crm)) as url:
        lookup = f"{url}/api/v1/pos/customer"
        pos = {"X-API-Key": shop.pos_key}
        r = httpx.get(lookup, params={"loyalty_id": "L-1815"}, headers=pos)
        assert r.status_code == 200, r.text
        assert r.json() == {"id": shop.ada, "name": "Ada Lovelace", "tier": "gold"}
        for prefix in ("L-18", "L-181", "L-1815%", "l-1815", "%", "L-1815 "):
            miss = httpx.get(lookup, params={"loyalty_id": prefix}, headers=pos)
            assert miss.status_code == 404, (prefix, miss.text)
        assert httpx.get(lookup, params={"loyalty_id": ""}, headers=pos).status_code == 422
        limited = httpx.get(lookup, params={"loyalty_id": "L-1815"}, headers=pos)
        assert limited.status_code == 429 and limited.json()["reason"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        refused = {
            "agent": {"X-API-Key": shop.agent_key},
            "associate of this store": token(url, "alice"),
            "manager of this store": token(url, "mona"),
            "associate of another store": token(url, "bob"),
        }
        for who, headers in refused.items():
            r = httpx.get(lookup, params={"loyalty_id": "L-1815"}, headers=headers)
            assert r.status_code == 403, (who, r.status_code, r.text)
    with shop.crm.sessions() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "pos_lookup").order_by(AuditEvent.id)
        ).all()
    assert [e.customer_id for e in events] == [shop.ada] + [None] * 6
    assert all(e.store_id == shop.store and "L-18" not in json.dumps(e.detail) for e in events)
    assert [e.detail["found"] for e in events] == [True] + [False] * 6
