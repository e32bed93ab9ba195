"""The public Python API (`facecrm.open`): its doctests and the photo forms it takes."""

from __future__ import annotations

import doctest
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

import facecrm
from facecrm import demo, facade
from facecrm.config import Settings
from facecrm.crm import runtime
from facecrm.crm.models import AuditEvent, Customer
from facecrm.errors import ConsentError, InvalidError
from facecrm.vision.pipeline import FacePipeline

COLLINS = Path(str(resources.files("facecrm") / "demo_data" / "eileen_collins_nasa.jpg"))


@pytest.fixture()
def shared_pipeline(pipeline: FacePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """`facecrm.open` without `pipeline=` loads the default one: the session's, loaded once."""
    monkeypatch.setattr(runtime, "default_pipeline", lambda _settings: pipeline)


@pytest.fixture()
def local(
    settings: Settings, pipeline: FacePipeline, database_url: str
) -> Iterator[facade.LocalCRM]:
    crm = facecrm.open(data_dir=settings.data_dir, database_url=database_url, pipeline=pipeline)
    yield crm
    crm.close()


def test_doctests(tmp_path: Path, shared_pipeline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' mkdtemp()
    for module in (facade, facecrm):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, raise_on_error=False)
        assert result.failed == 0, f"{module.__name__}: {result.failed} doctest(s) failed"
    assert doctest.testmod(facade).attempted >= 20  # the examples did run


def test_import_is_cheap() -> None:
    """`import facecrm` loads neither the models' libraries nor the database layer."""
    code = "import sys, facecrm; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    for heavy in ("cv2", "numpy", "sqlalchemy", "onnxruntime", "dlib", "httpx"):
        assert f"'{heavy}'" not in loaded


def test_paths_bytes_and_arrays(local: facade.LocalCRM) -> None:
    grace = local.enroll("Grace Hopper", [demo.hopper()], consent=True)
    eileen = local.enroll("Eileen Collins", [str(COLLINS)], consent=True)
    assert sorted((c.name, c.templates) for c in local.customers()) == [
        ("Eileen Collins", 1),
        ("Grace Hopper", 1),
    ]
    for photo in (COLLINS, str(COLLINS), COLLINS.read_bytes(), bytearray(COLLINS.read_bytes())):
        (face,) = local.identify(photo)
        assert face.customer_id == eileen.id and face.name == "Eileen Collins"
        assert face.similarity is not None and face.similarity >= local.threshold
        assert face.box.width > 50 and face.known
    assert local.verify(grace.id, demo.another_day(demo.hopper())).match
    no = local.verify(grace.id, COLLINS.read_bytes())
    assert not no.match and no.similarity is not None and no.similarity < no.threshold
    local.erase(eileen.id)
    (face,) = local.identify(COLLINS)
    assert face == facade.Face(face.box, None, None, None)
    assert [c.name for c in local.customers()] == ["Grace Hopper"]


@pytest.mark.parametrize(
    "photo",
    [
        np.zeros((64, 64), np.uint8),  # grey
        np.zeros((64, 64, 3), np.float32),  # not uint8
        np.zeros((64, 64, 4), np.uint8),  # RGBA
        42,
    ],
)
def test_wrong_photo_types_are_refused(local: facade.LocalCRM, photo: object) -> None:
    with pytest.raises(InvalidError):
        local.identify(photo)  # type: ignore[arg-type]


def test_enrolling_without_consent_stores_nothing(local: facade.LocalCRM) -> None:
    for consent in (False, "yes", 1):
        with pytest.raises(ConsentError, match="consent=True"):
            local.enroll("Grace Hopper", [demo.hopper()], consent=consent)  # type: ignore[arg-type]
    assert local.customers() == []
    with local.service.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 0


def test_acts_as_system_and_records_the_current_consent(local: facade.LocalCRM) -> None:
    from facecrm.crm.authz import SYSTEM
    from facecrm.crm.consent_text import CURRENT

    grace = local.enroll("Grace Hopper", [demo.hopper()], consent=True)
    local.identify(demo.hopper())
    with local.service.sessions() as session:
        customer = session.get(Customer, grace.id)
        assert customer is not None
        (consent,) = customer.consents
        assert consent.text_version == CURRENT and consent.withdrawn_at is None
        actors = set(session.scalars(select(AuditEvent.actor)))
    assert local.consent_text.startswith("I agree")
    assert actors == {SYSTEM.label}
