"""Errors as RFC 9457 `application/problem+json`; never a bare 500."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from facecrm.crm.authz import Forbidden
from facecrm.crm.errors import ConflictError, ConsentError, InvalidError, NotFoundError
from facecrm.crm.service import EnrollmentError
from facecrm.vision.image import DecoderBusy, ImageError

log = logging.getLogger("facecrm.api")
MEDIA_TYPE = "application/problem+json"


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    """A problem response with the standard members plus `extra`."""
    title = HTTPStatus(status).phrase
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {**({"WWW-Authenticate": "Bearer"} if status == 401 else {}), **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


class ApiError(Exception):
    """Raised by routes for a specific status."""

    def __init__(self, status: int, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


def install(app: FastAPI) -> None:
    """Map every domain error to its status."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.detail, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(400, "the request body is not valid JSON", errors=errors)
        return problem(422, "the request is not valid", errors=errors)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return problem(404, str(exc))

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return problem(409, str(exc), **({"reason": exc.reason} if exc.reason else {}))

    @app.exception_handler(ConsentError)
    async def _consent(_: Request, exc: ConsentError) -> JSONResponse:
        return problem(409, str(exc), reason="consent_required")

    @app.exception_handler(InvalidError)
    async def _invalid(_: Request, exc: InvalidError) -> JSONResponse:
        return problem(422, str(exc), **({"reason": exc.reason} if exc.reason else {}))

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, str(exc))

    @app.exception_handler(ImageError)
    async def _image(_: Request, exc: ImageError) -> JSONResponse:
        status = 413 if exc.reason == "too_large" else 422
        return problem(status, exc.message, reason=exc.reason)

    @app.exception_handler(DecoderBusy)
    async def _busy(_: Request, exc: DecoderBusy) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)}
        return problem(503, str(exc), headers=headers, reason="busy")

    @app.exception_handler(EnrollmentError)
    async def _quality(_: Request, exc: EnrollmentError) -> JSONResponse:
        return problem(422, str(exc.error), reason=exc.error.reason)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # a concurrent change won a uniqueness race; nothing was written
        return problem(409, "the change conflicts with existing data")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "an unexpected error occurred; it has been logged")
