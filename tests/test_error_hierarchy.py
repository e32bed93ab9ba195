"""One error hierarchy: every error class maps to its status and reason through one handler.

The table is checked on a real uvicorn server running the API's own handlers
(`api.problems.install`, which `create_app` calls), and it must list every
`FacecrmError` subclass in the package: a new class without a row fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

import facecrm
from facecrm.agent.runner import CameraError
from facecrm.alerts.webhooks import WebhookRefused
from facecrm.api import problems
from facecrm.api.problems import ApiError
from facecrm.crm import authz, service
from facecrm.crm import errors as crm_errors
from facecrm.crm.payflow import BurstTooLarge, SessionClosed
from facecrm.crm.payments import CardNumberRefused, IdempotencyKeyReused, PaymentConsentError
from facecrm.crm.pos import RateLimitedError
from facecrm.crm.readiness import StoreNotReadyError
from facecrm.crm.selfservice import TooManyRequestsError
from facecrm.crm.service import EnrollmentError
from facecrm.crm.sync import FullResyncRequired
from facecrm.crypto import CryptoError
from facecrm.errors import (
    AlreadyEnrolledError,
    ConfigError,
    ConflictError,
    ConsentError,
    FacecrmError,
    FaceMismatchError,
    Forbidden,
    InvalidError,
    LoginFailedError,
    LoginThrottledError,
    MissingExtraError,
    NotFoundError,
    SchemaOutdatedError,
)
from facecrm.vision.attributes import MissingAttributeModelsError
from facecrm.vision.image import DecoderBusy, ImageError
from facecrm.vision.models import ModelNotFoundError
from facecrm.vision.pipeline import QualityError

from server import serve

SECRET = "mk-1 key material 7f3a"  # a 500's message must not reach the client

# (error, status, reason or None); a reason-less ApiError has no `reason` member
TABLE: list[tuple[FacecrmError, int, str | None]] = [
    (NotFoundError("no customer with id 'x'"), 404, "not_found"),
    (ConflictError("duplicate loyalty id"), 409, "conflict"),
    (AlreadyEnrolledError("this face is already enrolled"), 409, "already_enrolled"),
    (ConsentError("no active consent"), 409, "consent_required"),
    (InvalidError("the name is empty"), 422, "invalid"),
    (InvalidError("unknown channel", reason="bad_channel"), 422, "bad_channel"),
    (FaceMismatchError("not the same person"), 422, "face_mismatch"),
    (WebhookRefused("webhook_address", "a private address"), 422, "webhook_address"),
    (Forbidden("this store is not one of yours"), 403, "forbidden"),
    (ImageError("corrupt", "the image is corrupt"), 422, "corrupt"),
    (ImageError("too_large", "the image is too large"), 413, "too_large"),
    (QualityError("blurred"), 422, "blurred"),
    (EnrollmentError("upload.jpg", QualityError("multiple_faces")), 422, "multiple_faces"),
    (DecoderBusy(), 503, "busy"),
    (LoginThrottledError(4.2), 429, "login_throttled"),
    (LoginFailedError(), 401, "login_failed"),
    (ApiError(429, "too many identifications", reason="rate_limited"), 429, "rate_limited"),
    (ApiError(401, "log in"), 401, None),
    (CryptoError(f"master key {SECRET!r} is not available"), 500, "crypto_error"),
    (ConfigError(f"invalid settings: {SECRET}"), 500, "misconfigured"),
    (ModelNotFoundError(f"model {SECRET} is missing"), 500, "model_missing"),
    (MissingExtraError("server", "sqlalchemy"), 503, "missing_extra"),
    (MissingAttributeModelsError("fer"), 503, "missing_extra"),
    (SchemaOutdatedError("schema 0006; run `facecrm migrate`"), 503, "schema_outdated"),
    (CameraError("camera 7: no camera at device index 7"), 422, "camera_unavailable"),
    (RateLimitedError(3.2), 429, "rate_limited"),
    (TooManyRequestsError("codes to this address or phone", 3.2), 429, "rate_limited"),
    (FullResyncRequired("the cursor is older than the log"), 410, "full_resync_required"),
    (StoreNotReadyError("the store's set-up is not confirmed"), 409, "store_not_ready"),
    (CardNumberRefused("this looks like a card number"), 422, "card_number_refused"),
    (IdempotencyKeyReused("the key was used for another payment"), 409, "idempotency_key_reused"),
    (PaymentConsentError("face payment needs both consents"), 409, "payment_consent_required"),
    (BurstTooLarge("a burst has at most 12 frames"), 413, "burst_too_large"),
    (SessionClosed("the session is declined"), 409, "session_final"),
    (SessionClosed("the session expired", reason="session_expired"), 409, "session_expired"),
]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    app = FastAPI()
    problems.install(app)

    @app.get("/raise/{n}")
    def _raise(n: int) -> None:
        raise TABLE[n][0]

    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


@pytest.mark.parametrize(
    ("n", "row"), list(enumerate(TABLE)), ids=[f"{type(e).__name__}-{s}" for e, s, _ in TABLE]
)
def test_error_maps_to_status_and_reason(
    client: httpx.Client, n: int, row: tuple[FacecrmError, int, str | None]
) -> None:
    error, status, reason = row
    r = client.get(f"/raise/{n}")
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body.get("reason") == reason
    assert (error.status, error.reason) == (status, reason)
    if status == 500 or isinstance(error, MissingExtraError):  # logged, not shown
        assert SECRET not in r.text and "logged" in body["detail"]
        assert "pip install" not in r.text  # the operator's command stays in the log
    else:
        assert body["detail"] == error.detail
    if isinstance(error, DecoderBusy):
        assert r.headers["retry-after"] == "1"
    if isinstance(error, LoginThrottledError):  # whole seconds, rounded up
        assert r.headers["retry-after"] == "5" and body["retry_after"] == 5
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_enrollment_error_detail_omits_the_file_name(client: httpx.Client) -> None:
    n = next(i for i, (e, _, _) in enumerate(TABLE) if isinstance(e, EnrollmentError))
    detail = client.get(f"/raise/{n}").json()["detail"]
    assert detail == str(QualityError("multiple_faces")) and "upload.jpg" not in detail


def test_every_error_class_has_a_row() -> None:
    """Walk the package: each FacecrmError subclass appears in TABLE."""
    found: set[type[FacecrmError]] = {FacecrmError}
    for info in pkgutil.walk_packages(facecrm.__path__, "facecrm."):
        if "migrations" in info.name or info.name.endswith("__main__"):
            continue
        for value in vars(importlib.import_module(info.name)).values():
            if isinstance(value, type) and issubclass(value, FacecrmError):
                found.add(value)
    covered = {type(error) for error, _, _ in TABLE}
    assert sorted(c.__qualname__ for c in found - covered - {FacecrmError}) == []


def test_one_handler_for_the_hierarchy() -> None:
    app = FastAPI()
    problems.install(app)
    domain = [k for k in app.exception_handlers if isinstance(k, type) and k is not Exception]
    assert FacecrmError in domain
    assert [
        k.__name__ for k in domain if issubclass(k, FacecrmError) and k is not FacecrmError
    ] == []


def test_old_import_paths_and_builtin_bases_still_work() -> None:
    assert crm_errors.NotFoundError is NotFoundError and authz.Forbidden is Forbidden
    assert service.NotFoundError is NotFoundError
    # callers that catch the built-in bases keep working
    assert issubclass(NotFoundError, LookupError) and issubclass(InvalidError, ValueError)
    assert issubclass(ConflictError, ValueError) and issubclass(Forbidden, PermissionError)
    assert issubclass(ImageError, ValueError) and issubclass(QualityError, ValueError)
    assert issubclass(CryptoError, RuntimeError) and issubclass(ModelNotFoundError, RuntimeError)
    assert all(e.exit_code == 1 for e, _, _ in TABLE)
