"""Encryption at rest, crypto-shredding and online master-key rotation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import func, select

from facecrm.config import Settings
from facecrm.crm.authz import SYSTEM, Forbidden, Principal
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import (
    AuditEvent,
    Customer,
    CustomerKey,
    CustomerPhoto,
    FaceTemplate,
    Purpose,
    Role,
)
from facecrm.crm.service import FaceCRM, Photo
from facecrm.crypto import CryptoError, add_master_key, drop_master_keys, key_file
from facecrm.vision.pipeline import FacePipeline
from facecrm.vision.types import Image

Load = Callable[[str], Image]


def _enroll(crm: FaceCRM, load: Load) -> str:
    photo = Photo("p", load("identities/rose_leslie/1.jpg"))
    return crm.enroll("Rose", [photo], CURRENT, "kiosk", SYSTEM, profile={"show_photo": True}).id


def test_templates_and_photos_are_sealed(crm: FaceCRM, load: Load) -> None:
    rose = _enroll(crm, load)
    with crm.sessions() as session:
        dlib, sface = session.scalars(select(FaceTemplate).order_by(FaceTemplate.id)).all()
        template = dlib
        photo = session.get(CustomerPhoto, rose)
        key = session.get(CustomerKey, rose)
        (plain,) = crm.plain_templates(session, rose)
    assert key is not None and len(key.wrapped) == 12 + 32 + 16
    assert len(template.vector) == 12 + 128 * 4 + 16
    assert plain[2].tobytes() not in template.vector
    assert sface.model_id == "sface-2021dec" and len(sface.vector) == 12 + 128 * 4 + 16
    assert photo is not None and not photo.jpeg.startswith(b"\xff\xd8")  # not a readable JPEG
    with crm.sessions() as session:
        assert (crm.photo(session, rose) or b"")[:2] == b"\xff\xd8"


@pytest.mark.parametrize("how", ["withdraw", "erase"])
def test_withdrawal_and_erasure_destroy_the_data_key(crm: FaceCRM, load: Load, how: str) -> None:
    rose = _enroll(crm, load)
    with crm.sessions() as session:
        sealed = session.scalars(  # e.g. in a backup
            select(FaceTemplate.vector).where(FaceTemplate.model_id == crm.model_id)
        ).one()
        cipher = crm.cipher(session, rose)
    if how == "withdraw":
        crm.withdraw(rose, Purpose.IN_STORE_RECOGNITION, SYSTEM)
    else:
        crm.delete_customer(rose, SYSTEM)
    with crm.sessions() as session:
        assert session.get(CustomerKey, rose) is None
        with pytest.raises(CryptoError):
            crm.cipher(session, rose)
    # only the destroyed key opened it
    assert np.frombuffer(cipher.open(sealed, f"template:{crm.model_id}"), np.float32).shape == (
        128,
    )


def test_online_rotation(settings: Settings, pipeline: FacePipeline, load: Load) -> None:
    server = FaceCRM(settings, pipeline=pipeline)  # a running server
    rose = _enroll(server, load)
    old = server.keys.current_id
    rotator = FaceCRM(settings, pipeline=pipeline)  # `facecrm keys rotate`
    new = add_master_key(settings)
    assert rotator.rotate_keys(SYSTEM) == 1
    assert rotator.master_keys_in_use() == {new}
    removed = drop_master_keys(settings, rotator.master_keys_in_use())
    assert removed == [old] and old not in key_file(settings).read_text()
    # the running server, which loaded only the old key, follows the new file
    (face,) = (server.verify(rose, load("identities/rose_leslie/2.jpg"), SYSTEM),)
    assert face.match
    fresh = FaceCRM(settings, pipeline=pipeline)
    (found,) = fresh.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
    assert found.match is not None and found.match.customer_id == rose


def test_bulk_sealing_opens_like_one_by_one(crm: FaceCRM) -> None:
    """`seal_new_customers` (benchmark galleries, imports): one new key per customer, written
    at once; what it seals opens with each customer's own key, and an existing key is never
    replaced (that would shred the data it sealed)."""
    rng = np.random.default_rng(0)
    vectors = {
        f"bulk{i}": list(rng.standard_normal((i + 1, 128)).astype(np.float32)) for i in range(3)
    }
    with crm.sessions() as session, session.begin():
        session.add_all(Customer(id=c, name=c) for c in [*vectors, "rose"])
        session.flush()
        crm.vault.seal_templates(session, "rose", [vectors["bulk0"][0]])  # rose has a key
        sealed = crm.vault.seal_new_customers(session, vectors)
        session.add_all(
            FaceTemplate(customer_id=c, model_id=crm.model_id, vector=v, quality={}, source="t")
            for c, blobs in sealed.items()
            for v in blobs
        )
    with crm.sessions() as session:
        opened = {c: [] for c in vectors}
        for _, owner, vector in crm.plain_templates(session):
            opened.setdefault(owner, []).append(vector)
        assert session.scalar(select(func.count()).select_from(CustomerKey)) == 4
    for customer, expected in vectors.items():
        np.testing.assert_array_equal(np.stack(opened[customer]), np.stack(expected))
    with crm.sessions() as session, session.begin():
        keys = {k.customer_id: k.wrapped for k in session.scalars(select(CustomerKey))}
        with pytest.raises(ValueError, match="rose already has a data key"):
            crm.vault.seal_new_customers(session, {"new": [], "rose": []})
    with crm.sessions() as session:
        assert {k.customer_id: k.wrapped for k in session.scalars(select(CustomerKey))} == keys


def test_only_an_administrator_rotates_keys(crm: FaceCRM, load: Load) -> None:
    """A manager (or a device) is refused before anything is re-wrapped or audited; an
    administrator (the CLI's SYSTEM is one) rotates."""
    rose = _enroll(crm, load)
    add_master_key(crm.settings)

    def state() -> tuple[str | None, int]:
        with crm.sessions() as session:
            key = session.get(CustomerKey, rose)
            audited = session.scalar(select(func.count()).where(AuditEvent.action == "keys_rotate"))
            return (key.key_id if key else None), int(audited or 0)

    before = state()
    manager = Principal("staff", "m1", "maria", Role.MANAGER, frozenset({"store-1"}))
    device = Principal("device", "d1", "door", "agent", frozenset({"store-1"}))
    for refused in (manager, device):
        with pytest.raises(Forbidden):
            crm.rotate_keys(refused)
    assert state() == before and before[1] == 0
    admin = Principal("staff", "a1", "ada", Role.ADMIN, None)
    assert crm.rotate_keys(admin) == 1
    after = state()
    assert after[0] != before[0] and after[1] == 1
