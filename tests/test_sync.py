"""Incremental agent gallery sync, store scope and server-side decisions (`crm.sync`),
against a real uvicorn server on SQLite and PostgreSQL, with real faces."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from facecrm.agent.runner import Agent, AgentConfig, LocalGallery
from facecrm.config import API_PREFIX
from facecrm.crm import accounts, activity, db
from facecrm.crm.authz import SYSTEM, Principal
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.errors import ConflictError
from facecrm.crm.models import (
    AuditEvent,
    DeviceKind,
    GalleryChange,
    Purpose,
    ThrottleCounter,
)
from facecrm.crm.service import FaceCRM, Photo
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline
from facecrm.vision.types import Image

from server import serve

Load = Callable[[str], Image]


@dataclass
class Chain:
    crm: FaceCRM
    url: str
    stores: dict[str, str]  # "A"/"B" -> store id
    keys: dict[str, str]  # "A"/"B" -> the store agent's device key
    obama: str  # enrolled in store A
    kit: str  # enrolled in store B

    def client(self, store: str = "A") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.keys[store]}, timeout=30)


@pytest.fixture()
def chain(crm: FaceCRM, load: Load) -> Iterator[Chain]:
    stores, keys = {}, {}
    with db.transaction(crm.sessions) as session:
        for name in ("A", "B"):
            shop = accounts.create_store(session, name, "Main St", SYSTEM)
            _, keys[name] = accounts.create_device(session, shop.id, "agent", principal=SYSTEM)
            stores[name] = shop.id
    obama = enroll(crm, "Barack Obama", load("identities/barack_obama/1.jpg"), stores["A"])
    kit = enroll(crm, "Kit Harington", load("identities/kit_harington/1.jpg"), stores["B"])
    with serve(create_app(crm)) as url:
        yield Chain(crm, url, stores, keys, obama, kit)


def enroll(crm: FaceCRM, name: str, image: Image, store_id: str) -> str:
    customer = crm.enroll(
        name, [Photo("still", image)], CURRENT, "kiosk", SYSTEM, store_id=store_id
    )
    return customer.id


def sync(client: httpx.Client, cursor: str | None = None, limit: int = 5000) -> httpx.Response:
    params: dict[str, str | int] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return client.get(f"{API_PREFIX}/agent/sync", params=params)


def catch_up(client: httpx.Client, cursor: str | None, limit: int = 5000) -> tuple[str, list]:
    """Every page until `more` is false: (the last cursor, the pages' bodies)."""
    pages = []
    while True:
        response = sync(client, cursor, limit)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = pages[-1]["cursor"]
        if not pages[-1]["more"]:
            return cursor, pages


def template(pipeline: FacePipeline, image: Image) -> np.ndarray:
    return pipeline.faces(image)[0].template  # type: ignore[return-value]


def test_incremental_after_enroll_withdraw_erase(
    chain: Chain, pipeline: FacePipeline, load: Load
) -> None:
    """A running agent gets only what changed (a few hundred bytes), removals as opaque ids."""
    crm, models = chain.crm, chain.crm.sync.models()
    with chain.client() as client:
        cursor, pages = catch_up(client, None)
        assert pages[0]["reset"] and pages[0]["rule"]["model_id"] == crm.model_id
        held = {c for p in pages for m in p["models"].values() for c in m["customers"]}
        assert held == {chain.obama, chain.kit}  # full mode: the whole chain
        sent = sum(len(m["ids"]) for p in pages for m in p["models"].values())
        assert sent == 2 * len(models)  # one template of each model per customer

        rose = enroll(crm, "Rose Leslie", load("identities/rose_leslie/1.jpg"), chain.stores["B"])
        response = sync(client, cursor)
        page = response.json()
        assert not page["reset"] and page["rule"] is None and page["removed"] == []
        assert {m: p["customers"] for m, p in page["models"].items()} == {m: [rose] for m in models}
        assert len(response.content) < 10_000  # the Done-when figure per change
        vectors = np.frombuffer(base64.b64decode(page["models"][crm.model_id]["vectors"]), "<f2")
        exact = crm.plain_templates(crm.sessions(), rose)[0][2]
        assert abs(float(vectors.astype(np.float32) @ exact) - 1.0) < 1e-3  # float16 is enough

        crm.withdraw(rose, Purpose.IN_STORE_RECOGNITION, SYSTEM)
        crm.delete_customer(chain.kit, SYSTEM)
        cursor2, pages = catch_up(client, page["cursor"])
        assert sorted(c for p in pages for c in p["removed"]) == sorted([rose, chain.kit])
        assert all(not m["ids"] for p in pages for m in p["models"].values())
        # what is left of them in the log: one `remove` row each, ids only
        with crm.sessions() as session:
            rows = session.execute(
                select(GalleryChange.kind, GalleryChange.template_id).where(
                    GalleryChange.customer_id.in_([rose, chain.kit])
                )
            ).all()
        assert sorted(rows) == [("remove", None), ("remove", None)]
        # nothing new: an empty page, not audited
        before = _count(crm, AuditEvent)
        page = sync(client, cursor2).json()
        assert page["cursor"] == cursor2 and not page["removed"] and not page["more"]
        assert _count(crm, AuditEvent) == before


def _count(crm: FaceCRM, model: type) -> int:
    with crm.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_paging_and_the_local_gallery(chain: Chain, pipeline: FacePipeline, load: Load) -> None:
    """One template per page still ends with every template, and the agent's gallery
    decides the same faces as the server."""
    with chain.client() as client:
        _, pages = catch_up(client, None, limit=1)
        ids = [i for p in pages for m in p["models"].values() for i in m["ids"]]
        assert len(ids) == len(set(ids)) == 2 * len(chain.crm.sync.models())
        assert all(len(m["ids"]) <= 1 for p in pages for m in p["models"].values())
        local = LocalGallery()
        assert local.sync(client, page=1)
    obama = template(pipeline, load("identities/barack_obama/3.jpg"))
    stranger = template(pipeline, load("distractors/paul_rudd.jpg"))
    assert local.decide(obama) is not None and local.decide(obama)[0] == chain.obama  # type: ignore[index]
    assert local.decide(stranger) is None
    assert local.size() == (2, 2)


def test_a_rule_or_mode_change_forces_a_full_sync(chain: Chain) -> None:
    crm = chain.crm
    with chain.client() as client:
        cursor, _ = catch_up(client, None)
        local = LocalGallery()
        local.sync(client)
        crm.settings.target_fmr = 1e-4  # a new operating point: another threshold
        response = sync(client, cursor)
        assert response.status_code == 410
        assert response.json()["reason"] == "full_resync_required"
        assert local.sync(client)  # the agent starts over without being told twice
        assert local.threshold == pytest.approx(crm.threshold)
        crm.settings.agent_sync_store_modes = {chain.stores["A"]: "server"}
        assert sync(client, local.cursor).status_code == 410
        assert local.sync(client) and local.mode == "server" and local.size() == (0, 0)


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "garbage-cursor-value"},
        {"cursor": "i1.zzzzzzzzzzzz"},
        {"cursor": "i99999999999.0123456789ab"},  # ahead of the log
        {"limit": 0},
        {"limit": 10_001},
        {"limit": "many"},
    ],
)
def test_bad_cursors_and_limits_are_4xx(chain: Chain, params: dict[str, object]) -> None:
    with chain.client() as client:
        response = client.get(f"{API_PREFIX}/agent/sync", params=params)  # type: ignore[arg-type]
    assert response.status_code == 422, response.text


def test_a_stale_cursor_is_410(chain: Chain) -> None:
    with chain.client() as client:
        response = sync(client, "i0.0123456789ab")  # another rule's digest
    assert response.status_code == 410


def test_store_mode_holds_the_store_scope_only(chain: Chain) -> None:
    """Store B's agent never receives store A's customer until they are seen in B."""
    crm = chain.crm
    crm.settings.agent_sync_mode = "store"
    with chain.client("B") as b, chain.client("A") as a:
        cursor, pages = catch_up(b, None)
        assert pages[0]["mode"] == "store"
        held = {c for p in pages for m in p["models"].values() for c in m["customers"]}
        assert held == {chain.kit}
        _, pages_a = catch_up(a, None)
        assert {c for p in pages_a for m in p["models"].values() for c in m["customers"]} == {
            chain.obama
        }
        # a cursor of store A's agent is refused to store B's
        assert sync(b, pages_a[-1]["cursor"]).status_code in {410, 422}
        with db.transaction(crm.sessions) as session:  # Obama is seen in store B
            activity.record_visit(session, SYSTEM, chain.obama, chain.stores["B"], "staff")
        _, pages = catch_up(b, cursor)
        held = {c for p in pages for m in p["models"].values() for c in m["customers"]}
        assert held == {chain.obama}


def _b64(vector: np.ndarray) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def test_server_side_decision_known_and_unknown(
    chain: Chain, pipeline: FacePipeline, load: Load
) -> None:
    """Known faces are named and audited as identifications; an unknown leaves nothing."""
    crm = chain.crm
    second = crm.second_opinion

    def ask(client: httpx.Client, image: Image) -> httpx.Response:
        face = pipeline.faces(image)[0]
        body = {"model_id": crm.model_id, "template": _b64(face.template)}  # type: ignore[arg-type]
        if second is not None:
            body["second"] = _b64(second.embed(image, [face])[0])
        return client.post(f"{API_PREFIX}/agent/decide", json=body)

    with chain.client() as client:
        known = ask(client, load("identities/barack_obama/3.jpg"))
        assert known.status_code == 200, known.text
        assert known.json()["known"] and known.json()["customer_id"] == chain.obama
        with crm.sessions() as session:
            event = session.scalars(select(AuditEvent).where(AuditEvent.action == "identify")).one()
            assert event.customer_id == chain.obama and event.store_id == chain.stores["A"]
        events, counters = _count(crm, AuditEvent), _count(crm, ThrottleCounter)
        unknown = ask(client, load("distractors/paul_rudd.jpg"))
        assert unknown.json() == {"known": False, "customer_id": None, "similarity": None}
        assert _count(crm, AuditEvent) == events  # not stored, not logged, not counted
        assert _count(crm, ThrottleCounter) <= counters  # the device's budget, not a person's


def test_a_scoped_agent_without_a_store_gets_no_gallery(
    chain: Chain, pipeline: FacePipeline, load: Load
) -> None:
    """Only a chain-wide caller (stores None) syncs and decides across stores: an agent
    principal scoped to no store is refused, not treated as chain-wide."""
    crm = chain.crm
    stray = Principal("device", "stray", "stray", DeviceKind.AGENT, frozenset())
    face = template(pipeline, load("identities/barack_obama/3.jpg"))
    with pytest.raises(ConflictError):
        crm.sync.page(stray, None, 100)
    with pytest.raises(ConflictError):
        crm.sync.decide(stray, face, None)
    everyone = crm.sync.page(SYSTEM, None, 100)
    assert {chain.obama, chain.kit} <= set(everyone.models[crm.model_id].customers)
    known = crm.sync.decide(SYSTEM, face, None)
    assert known is not None and known[0] == chain.obama


@pytest.mark.parametrize(
    "body",
    [
        {"template": "not base64!"},
        {"template": base64.b64encode(b"abc").decode()},  # not whole float32 values
        {"template": _b64(np.full(128, np.nan, np.float32))},
        {"template": _b64(np.zeros(128, np.float32))},
        {"template": _b64(np.ones(64, np.float32))},  # wrong length
    ],
)
def test_bad_templates_are_422(chain: Chain, body: dict[str, str]) -> None:
    with chain.client() as client:
        response = client.post(
            f"{API_PREFIX}/agent/decide", json={"model_id": chain.crm.model_id, **body}
        )
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "bad_template"


def test_decisions_are_rate_limited_and_model_checked(chain: Chain) -> None:
    chain.crm.settings.agent_decide_per_minute = 2
    body = {"model_id": chain.crm.model_id, "template": _b64(np.ones(128, np.float32))}
    key = {"X-API-Key": chain.keys["A"]}
    with serve(create_app(chain.crm)) as url, httpx.Client(base_url=url, headers=key) as client:
        wrong = client.post(f"{API_PREFIX}/agent/decide", json={**body, "model_id": "x"})
        assert wrong.status_code == 409
        codes = [client.post(f"{API_PREFIX}/agent/decide", json=body).status_code for _ in "abc"]
    assert codes == [200, 200, 429]


def test_a_running_agent_stops_recognising_an_erased_customer_within_seconds(
    chain: Chain, pipeline: FacePipeline, load: Load, tmp_path: Path
) -> None:
    """The agent's own sync loop (a thread) against the real server: measured, bounded."""
    config = AgentConfig(
        server=chain.url,
        api_key=chain.keys["A"],
        cameras=(),
        data_dir=tmp_path / "agent",
        sync_seconds=1.0,
    )
    agent = Agent(config, pipeline)
    face = template(pipeline, load("identities/barack_obama/3.jpg"))
    loop = threading.Thread(target=agent._loop, args=("sync", config.sync_seconds), daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while agent.gallery.decide(face) is None:
            assert time.monotonic() < deadline, "the agent never synced"
            time.sleep(0.05)
        erased = time.monotonic()
        chain.crm.delete_customer(chain.obama, SYSTEM)
        while agent.gallery.decide(face) is not None:
            assert time.monotonic() - erased < 10, "the erasure did not reach the agent"
            time.sleep(0.02)
        took = time.monotonic() - erased
    finally:
        agent.stop.set()
        loop.join(timeout=10)
    print(f"erasure reached the running agent in {took:.2f} s")
    assert took <= config.sync_seconds + 2.0


def test_an_agent_older_than_the_pruned_log_syncs_in_full(chain: Chain, load: Load) -> None:
    """The log is pruned after `sync_log_days` (by the retention run); an agent behind it
    is told 410 and its `LocalGallery` starts over on its own."""
    from datetime import UTC, datetime, timedelta

    from facecrm.crm.retention import purge

    crm = chain.crm
    with chain.client() as client:
        local = LocalGallery()
        local.sync(client)
        stale = local.cursor
        enroll(crm, "Rose Leslie", load("identities/rose_leslie/1.jpg"), chain.stores["A"])
        purge(crm, SYSTEM, now=datetime.now(UTC) + timedelta(days=crm.settings.sync_log_days + 1))
        assert _count(crm, GalleryChange) == 0
        response = sync(client, stale)
        assert response.status_code == 410
        assert response.json()["reason"] == "full_resync_required"
        assert local.sync(client) and local.size() == (3, 3)


def test_the_template_cache_opens_exactly_the_rows_asked_for(crm: FaceCRM, load: Load) -> None:
    """A full sync asks for whole id ranges (read by range), a change for scattered ids (read
    by id list); either way each row gets its own customer's vector, and nothing else is
    opened or cached."""
    from facecrm.crm.models import FaceTemplate
    from facecrm.crm.sync import TemplateCache

    for name, photo in (
        ("Barack Obama", "identities/barack_obama/1.jpg"),
        ("Kit Harington", "identities/kit_harington/1.jpg"),
        ("Rose Leslie", "identities/rose_leslie/1.jpg"),
    ):
        crm.enroll(name, [Photo("still", load(photo))], CURRENT, "kiosk", SYSTEM)
    with crm.sessions() as session:
        rows = [
            (int(t), c, m)
            for t, c, m in session.execute(
                select(FaceTemplate.id, FaceTemplate.customer_id, FaceTemplate.model_id).order_by(
                    FaceTemplate.id
                )
            )
        ]
        truth = {
            t: v
            for model in {m for _, _, m in rows}
            for t, _, v in crm.vault.plain_templates(session, model_id=model)
        }
        assert len(rows) >= 6 and set(truth) == {t for t, _, _ in rows}  # both models' rows
        # a whole range; a range with a gap (read by range, the gap dropped); the two ends
        # of a wide range (read by id)
        for asked in (rows, [rows[0], *rows[2:4]], [rows[0], rows[-1]]):
            cache = TemplateCache()
            got = cache.vectors(crm, session, asked)
            assert len(cache) == len(asked)  # nothing else was opened and kept
            for (t, _, _), vector in zip(asked, got, strict=True):
                assert np.allclose(vector, truth[t], atol=1e-3)
            again = cache.vectors(crm, session, asked)  # from the cache, the same
            assert all(a is b for a, b in zip(got, again, strict=True))
