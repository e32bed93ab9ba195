"""Enrollment, identification and erasure over a real SQLite store and real faces."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, func, inspect, select, text

from facecrm.config import Settings
from facecrm.crm import customers, db, gallery_store
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.customers import ConsentGrant
from facecrm.crm.errors import InvalidError
from facecrm.crm.gallery_store import EF_SEARCH_MAX, bump_generation, ef_search_for
from facecrm.crm.models import AuditEvent, Consent, Customer, FaceTemplate, Purpose
from facecrm.crm.service import (
    ConsentError,
    EnrollmentError,
    FaceCRM,
    NotFoundError,
    Photo,
)
from facecrm.vision.pipeline import FacePipeline
from facecrm.vision.types import Image

DLIB, SFACE = "dlib-resnet-v1", "sface-2021dec"

Load = Callable[[str], Image]


def _photo(load: Load, path: str) -> Photo:
    return Photo(path, load(path))


def _count(crm: FaceCRM, model: type) -> int:
    with crm.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_enrolled_customer_is_recognised_and_strangers_are_unknown(
    crm: FaceCRM, load: Load
) -> None:
    obama = crm.enroll(
        "Barack", [_photo(load, "identities/barack_obama/1.jpg")], CURRENT, "kiosk", SYSTEM
    )
    crm.enroll("Rose", [_photo(load, "identities/rose_leslie/1.jpg")], CURRENT, "kiosk", SYSTEM)

    (same,) = crm.identify(load("identities/barack_obama/3.jpg"), SYSTEM)
    assert same.match is not None and same.match.customer_id == obama.id
    assert same.customer_name == "Barack" and same.match.similarity >= crm.threshold

    for stranger in ("distractors/paul_rudd.jpg", "identities/joe_biden/1.jpg"):
        (face,) = crm.identify(load(stranger), SYSTEM)
        assert face.match is None


def test_group_photo_names_each_customer_once(crm: FaceCRM, load: Load) -> None:
    obama = crm.enroll(
        "Barack", [_photo(load, "identities/barack_obama/2.jpg")], CURRENT, "kiosk", SYSTEM
    )
    results = crm.identify(load("scenes/obama_and_biden.jpg"), SYSTEM)
    matched = [r.match.customer_id for r in results if r.match]
    assert matched == [obama.id]
    assert len(results) >= 2


def test_several_templates_per_customer(crm: FaceCRM, load: Load) -> None:
    kit = crm.enroll(
        "Kit",
        [
            _photo(load, "identities/kit_harington/1.jpg"),
            _photo(load, "identities/kit_harington/2.jpg"),
        ],
        CURRENT,
        "associate",
        SYSTEM,
    )
    # each photo stores a template of each model of the cascade (dlib, SFace)
    assert sorted(t.model_id for t in kit.templates) == [DLIB, DLIB, SFACE, SFACE]
    crm.add_photos(kit.id, [_photo(load, "identities/kit_harington/3.jpg")], SYSTEM)
    assert _count(crm, FaceTemplate) == 6
    (face,) = crm.identify(load("identities/kit_harington/3.jpg"), SYSTEM)
    assert face.match is not None and face.match.customer_id == kit.id
    assert face.match.similarity > 0.99  # the identical photo's template wins


def test_enrollment_is_all_or_nothing(crm: FaceCRM, load: Load) -> None:
    photos = [
        _photo(load, "identities/rose_leslie/1.jpg"),
        _photo(load, "scenes/two_people.jpg"),  # two faces: rejected
    ]
    with pytest.raises(EnrollmentError) as exc:
        crm.enroll("Rose", photos, CURRENT, "kiosk", SYSTEM)
    assert exc.value.error.reason == "multiple_faces"
    assert exc.value.source == "scenes/two_people.jpg"
    assert _count(crm, Customer) == 0 and _count(crm, FaceTemplate) == 0


def test_no_template_without_active_consent(crm: FaceCRM, load: Load) -> None:
    with db.transaction(crm.sessions) as session:
        session.add(Customer(id="noconsent", name="No Consent"))
    with pytest.raises(ConsentError):
        crm.add_photos("noconsent", [_photo(load, "identities/rose_leslie/1.jpg")], SYSTEM)
    assert _count(crm, FaceTemplate) == 0


def test_erasure_removes_from_search_at_once(crm: FaceCRM, load: Load) -> None:
    rose = crm.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], CURRENT, "kiosk", SYSTEM
    )
    (before,) = crm.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert before.match is not None
    crm.delete_customer(rose.id, SYSTEM)
    (after,) = crm.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert after.match is None
    assert _count(crm, FaceTemplate) == 0
    with pytest.raises(NotFoundError):
        crm.customer(rose.id, SYSTEM)


def test_identification_is_audited_without_strangers(crm: FaceCRM, load: Load) -> None:
    rose = crm.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], CURRENT, "kiosk", SYSTEM
    )
    crm.identify(load("scenes/kit_with_rose.jpg"), SYSTEM)  # Rose and an unenrolled man
    with crm.sessions() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    actions = [(e.action, e.customer_id) for e in events]
    assert ("identify", rose.id) in actions
    summary = next(e for e in events if e.action == "identify_summary")
    assert summary.detail == {"faces": 2, "matched": 1, "ambiguous": 0}
    # nothing about the stranger: no box, no score, no vector in any event
    for e in events:
        if e.action.startswith("identify"):
            assert set(e.detail) <= {"faces", "matched", "ambiguous", "similarity"}
            assert e.customer_id in {None, rose.id}


def test_unknown_customer_id(crm: FaceCRM) -> None:
    with pytest.raises(NotFoundError):
        crm.customer("does-not-exist", SYSTEM)
    with pytest.raises(NotFoundError):
        crm.delete_customer("does-not-exist", SYSTEM)


def test_gallery_is_rebuilt_from_the_database(
    settings: Settings, pipeline: FacePipeline, load: Load
) -> None:
    first = FaceCRM(settings, pipeline=pipeline)
    rose = first.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], CURRENT, "kiosk", SYSTEM
    )
    second = FaceCRM(settings, pipeline=pipeline)  # e.g. the next CLI invocation
    (face,) = second.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert face.match is not None and face.match.customer_id == rose.id


def test_saved_ann_index_is_reused_only_while_current(
    settings: Settings, pipeline: FacePipeline, load: Load
) -> None:
    settings.ann_min_size = 50
    crm = FaceCRM(settings, pipeline=pipeline)
    rose = crm.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], CURRENT, "kiosk", SYSTEM
    )
    rng = np.random.default_rng(7)
    with db.transaction(crm.sessions) as session:  # synthetic customers fill the gallery
        for n in range(60):
            v = rng.standard_normal(128).astype(np.float32)
            customer = Customer(name=f"synthetic {n}")
            customer.templates.append(
                FaceTemplate(
                    model_id=crm.model_id,
                    vector=(v / np.linalg.norm(v)).tobytes(),
                    quality={},
                    source="synthetic",
                )
            )
            session.add(customer)
        bump_generation(session, crm.model_id)
    # written plain, as before encryption at rest: `facecrm migrate` seals them
    reloaded = FaceCRM(settings, pipeline=pipeline, migrate=True)
    assert reloaded.legacy_sealed == 60 and reloaded.gallery.gallery.uses_ann
    index_file = settings.cache_dir / f"hnsw-{crm.model_id}.bin"
    assert index_file.is_file()
    assert (v / np.linalg.norm(v)).astype(np.float32).tobytes()[:64] not in index_file.read_bytes()
    again = FaceCRM(settings, pipeline=pipeline)  # loads the saved (encrypted) graph
    assert again.gallery.gallery.ann is not None and again.gallery.gallery.uses_ann
    reloaded.delete_customer(rose.id, SYSTEM)  # bumps the generation: the saved file is stale
    fresh = FaceCRM(settings, pipeline=pipeline)
    assert rose.id not in set(fresh.gallery.gallery._owner.values())
    (face,) = fresh.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert face.match is None


def test_migrations_up_and_down(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.migrate(engine)
    assert db.is_current(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"customers", "consents", "face_templates", "audit_events"} <= tables
    if engine.dialect.name == "postgresql":
        assert "gallery_vectors" in tables
    db.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    db.migrate(engine)
    assert db.is_current(engine)
    engine.dispose()


def test_pgvector_search_can_use_the_hnsw_index(crm: FaceCRM, load: Load) -> None:
    if crm.engine.dialect.name != "postgresql":
        pytest.skip("pgvector is the PostgreSQL gallery")
    crm.enroll("Rose", [_photo(load, "identities/rose_leslie/1.jpg")], CURRENT, "kiosk", SYSTEM)
    with crm.sessions() as session, session.begin():
        session.execute(text("SET LOCAL enable_seqscan = off"))
        dim = 128
        distance = f"embedding::vector({dim}) <#> CAST(:q AS vector({dim}))"
        plan = (
            session.execute(
                text(
                    f"EXPLAIN SELECT template_id FROM gallery_vectors WHERE model_id = :m "
                    f"ORDER BY {distance} LIMIT 5"
                ),
                {"q": "[" + ",".join(["0.1"] * dim) + "]", "m": crm.model_id},
            )
            .scalars()
            .all()
        )
    assert any("gallery_hnsw_" in line for line in plan), plan


def test_pgvector_searches_with_the_configured_ef_search(
    crm: FaceCRM, load: Load, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """pgvector's `ef_search` follows the gallery's size, counted in the database and
    re-counted once a minute, and `FACECRM_PGVECTOR_HNSW_EF_SEARCH` fixes it (a value below
    the size's is logged): pgvector's own CPU is most of an identify's cost on PostgreSQL."""
    if crm.engine.dialect.name != "postgresql":
        pytest.skip("pgvector is the PostgreSQL gallery")
    assert crm.settings.pgvector_hnsw_ef_search is None  # the default: by size
    crm.enroll("Rose", [_photo(load, "identities/rose_leslie/1.jpg")], CURRENT, "kiosk", SYSTEM)
    probe = crm.pipeline.faces(load("identities/rose_leslie/1.jpg"))[0].template
    assert probe is not None

    def searched_with() -> str:
        with crm.sessions() as session, session.begin():
            found = crm.gallery.candidates(session, probe[None, :])
            assert found[0] and found[0][0].similarity > 0.99
            return str(session.execute(text("SHOW hnsw.ef_search")).scalar_one())

    assert searched_with() == "200"  # a small gallery
    # one template is measured, two are above the (patched) measured size: re-counted
    # only when the minute is over
    monkeypatch.setattr(gallery_store, "EF_SEARCH_BY_SIZE", ((1, 200),))
    clock = [0.0]
    monkeypatch.setattr(gallery_store, "_now", lambda: clock[0])
    crm.__dict__.pop("gallery")  # a new process's store
    assert searched_with() == "200"
    crm.enroll("Kit", [_photo(load, "identities/kit_harington/1.jpg")], CURRENT, "kiosk", SYSTEM)
    clock[0] += gallery_store.SIZE_RECHECK_SECONDS - 1
    assert searched_with() == "200"
    clock[0] += 2
    assert searched_with() == "1000"
    # the setting reaches the store and wins; below the size's value it is logged once
    crm.settings.pgvector_hnsw_ef_search = 40
    crm.__dict__.pop("gallery")
    with caplog.at_level(logging.WARNING, logger="facecrm.gallery"):
        assert searched_with() == "40"
        assert searched_with() == "40"
    assert [r.getMessage() for r in caplog.records].count(
        "FACECRM_PGVECTOR_HNSW_EF_SEARCH=40 is below 1000, the value measured for a gallery "
        "of 2 templates: returning customers may be missed (unset it to follow the "
        "gallery's size)"
    ) == 1


def test_a_search_that_waited_for_the_first_count_does_not_count_again(crm: FaceCRM) -> None:
    """Searches that arrive together on a new process wait for one count, not one each."""
    if crm.engine.dialect.name != "postgresql":
        pytest.skip("pgvector is the PostgreSQL gallery")
    store = gallery_store.PgVectorGalleryStore(crm.pipeline.model_id)
    counts: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "count(*)" in statement:
            counts.append(statement)

    event.listen(crm.engine, "before_cursor_execute", seen)
    try:
        store._counting.acquire()  # another search is taking the first count
        answers: list[int] = []

        def search() -> None:
            with crm.sessions() as session:
                answers.append(store._ef_search(session))

        waiter = threading.Thread(target=search)
        waiter.start()
        time.sleep(0.2)  # the waiter is blocked on the first count
        store._size = (gallery_store._now(), 5)
        store._counting.release()
        waiter.join(10)
    finally:
        event.remove(crm.engine, "before_cursor_execute", seen)
    assert answers == [200] and counts == []


def test_ef_search_by_gallery_size_never_below_what_was_measured() -> None:
    """Each value only up to the size its agreement was measured at; beyond, the maximum."""
    assert ef_search_for(0) == ef_search_for(300_000) == 200
    assert ef_search_for(300_001) == ef_search_for(1_000_000) == EF_SEARCH_MAX == 1000
    assert ef_search_for(50_000_000) == 1000


def test_consent_text_version_is_checked_by_the_service(crm: FaceCRM, load: Load) -> None:
    """Every path that records a consent (API, console, CLI, enrollment) goes through
    `customers.give_consent`, so an unknown text version is refused there, changing nothing."""
    rose = crm.enroll(
        "Rose", [_photo(load, "identities/rose_leslie/1.jpg")], CURRENT, "kiosk", SYSTEM
    )
    before = (_count(crm, Customer), _count(crm, Consent), _count(crm, AuditEvent))
    with pytest.raises(InvalidError) as refused:
        crm.enroll("Kit", [_photo(load, "identities/kit_harington/1.jpg")], "v1", "kiosk", SYSTEM)
    assert refused.value.reason == "bad_consent_version" and refused.value.status == 422
    for version in ("v1", CURRENT + " ", "2026-11-V1"):
        with pytest.raises(InvalidError) as refused, db.transaction(crm.sessions) as session:
            grant = ConsentGrant(Purpose.IN_STORE_RECOGNITION, version, "kiosk")
            customers.give_consent(session, SYSTEM, rose.id, grant)
        assert refused.value.reason == "bad_consent_version"
    assert (_count(crm, Customer), _count(crm, Consent), _count(crm, AuditEvent)) == before
    with db.transaction(crm.sessions) as session:
        grant = ConsentGrant(Purpose.IN_STORE_RECOGNITION, CURRENT, "kiosk")
        assert customers.give_consent(session, SYSTEM, rose.id, grant).text_version == CURRENT
