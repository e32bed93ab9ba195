"""Domain exceptions behave as ordinary exceptions, also through a real HTTP server.

A frozen, slotted dataclass exception cannot take the `__traceback__` that `raise`,
Starlette and `add_note` set on it: the handler then fails with a TypeError and the
keep-alive connection of the client is reset.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path

import httpx
import pytest

import facecrm
from facecrm.api.problems import ApiError
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM, Forbidden
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.errors import ConflictError, ConsentError, InvalidError, NotFoundError
from facecrm.crm.service import EnrollmentError, FaceCRM
from facecrm.server import create_app
from facecrm.vision.image import ImageError
from facecrm.vision.pipeline import QualityError

from server import serve

PASSWORD = "correct horse battery"

DOMAIN_ERRORS: list[BaseException] = [
    EnrollmentError("upload.jpg", QualityError("multiple_faces")),
    QualityError("blurred"),
    ImageError("corrupt", "the image is corrupt"),
    ApiError(503, "busy", reason="busy"),
    NotFoundError("no such customer"),
    ConflictError("duplicate"),
    ConsentError("no consent"),
    InvalidError("empty name"),
    Forbidden("not your store"),
]


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda e: type(e).__name__)
def test_domain_exception_takes_traceback_and_notes(error: BaseException) -> None:
    try:
        raise error
    except BaseException as caught:
        caught.__traceback__ = caught.__traceback__  # what Starlette does
        caught.add_note("seen by the handler")
        caught.__cause__ = RuntimeError("cause")
        assert caught.__notes__ == ["seen by the handler"]


def test_no_exception_class_is_a_dataclass() -> None:
    """Every exception class in the package: no dataclass (frozen or slotted) among them."""
    found = []
    for info in pkgutil.walk_packages(facecrm.__path__, "facecrm."):
        if "migrations" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            is_error = isinstance(value, type) and issubclass(value, BaseException)
            if is_error and value.__module__.startswith("facecrm"):
                found.append(value)
    assert EnrollmentError in found and QualityError in found
    assert [c for c in found if dataclasses.is_dataclass(c)] == []


def test_rejected_enrollment_keeps_the_connection(crm: FaceCRM, faces_dir: Path) -> None:
    with db.transaction(crm.sessions) as session:
        accounts.create_staff(session, "admin", PASSWORD, "admin", [], principal=SYSTEM)
    with serve(create_app(crm)) as url, httpx.Client(base_url=url, timeout=60) as client:
        token = client.post(
            "/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}
        ).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        customer = client.post("/api/v1/customers", json={"name": "Two"}).json()
        r = client.post(
            f"/api/v1/customers/{customer['id']}/consents",
            json={"purpose": "in_store_recognition", "text_version": CURRENT, "channel": "kiosk"},
        )
        assert r.status_code == 201, r.text
        photo = faces_dir / "scenes" / "two_people.jpg"
        r = client.post(
            f"/api/v1/customers/{customer['id']}/faces",
            files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        )
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["reason"] == "multiple_faces"
        # the same keep-alive connection serves the next request
        again = client.get(f"/api/v1/customers/{customer['id']}")
        assert again.status_code == 200, again.text
        assert again.json()["name"] == "Two"
