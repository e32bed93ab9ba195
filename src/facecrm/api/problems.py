"""Errors as RFC 9457 `application/problem+json`; never a bare 500."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from facecrm.errors import FacecrmError, MissingExtraError

log = logging.getLogger("facecrm.api")
MEDIA_TYPE = "application/problem+json"
UNEXPECTED = "an unexpected error occurred; it has been logged"


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    """A problem response with the standard members plus `extra`."""
    title = HTTPStatus(status).phrase
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {**({"WWW-Authenticate": "Bearer"} if status == 401 else {}), **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


class ApiError(FacecrmError):
    """Raised by routes for a specific status; `extra` members go into the problem body."""

    reason: str | None = None  # type: ignore[assignment]  # routes' errors may have none

    def __init__(
        self, status: int, detail: str, reason: str | None = None, **extra: object
    ) -> None:
        super().__init__(detail, reason=reason)
        self.status, self._extra = status, extra

    def extra(self) -> dict[str, object]:
        return self._extra


def facecrm_problem(request: Request, exc: FacecrmError) -> JSONResponse:
    """The problem response for any error of the hierarchy (status, reason, detail).

    A server-side fault (500, or a missing optional part: 503) is logged and its message
    kept from the client.
    """
    detail = exc.detail
    if exc.status == 500 or isinstance(exc, MissingExtraError):
        log.error("%s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
        detail = UNEXPECTED
    reason = {"reason": exc.reason} if exc.reason else {}
    return problem(exc.status, detail, headers=exc.headers(), **reason, **exc.extra())


def install(app: FastAPI) -> None:
    """One handler for facecrm's errors, plus the framework's own and a last resort."""

    @app.exception_handler(FacecrmError)
    async def _facecrm(request: Request, exc: FacecrmError) -> JSONResponse:
        return facecrm_problem(request, exc)

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

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # a concurrent change won a uniqueness race; nothing was written
        return problem(409, "the change conflicts with existing data", reason="conflict")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, UNEXPECTED)
