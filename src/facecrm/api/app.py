"""The HTTP server: REST API under /api/v1 (and the staff console, see `facecrm.web`)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from facecrm import __version__
from facecrm.alerts.service import AlertService
from facecrm.api import problems
from facecrm.api.routes import activity, admin, agent, audit, auth, customers, recognition
from facecrm.config import Settings, get_settings
from facecrm.crm import retention
from facecrm.crm.service import FaceCRM
from facecrm.crm.throttle import LoginGuard, RateLimiter
from facecrm.metrics import Registry
from facecrm.web import console

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_PREFIX = "/api/v1"
API_ROUTERS = (
    auth.router,
    admin.router,
    customers.router,
    recognition.router,
    activity.router,
    agent.router,
    audit.router,
)
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and small fields around a photo

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(self), microphone=(), geolocation=()"),
    (b"cache-control", b"no-store"),
    # the console has no inline script or style: anything injected into a page cannot run
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
]
# only over https: a browser ignores it on http, and sending it there would mean nothing
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, before they are buffered."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > self.limit:
            await self._reject(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = problems.problem(413, f"the request is larger than {self.limit} bytes").body
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", problems.MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Add conservative security headers (CSP, and HSTS over https) to every response.

    The scheme is the request's as uvicorn sees it, so behind a TLS-terminating proxy
    HSTS is sent only when uvicorn trusts that proxy's X-Forwarded-Proto
    (`FORWARDED_ALLOW_IPS`, by default the local host only).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        wanted = [*SECURITY_HEADERS, HSTS] if scope.get("scheme") == "https" else SECURITY_HEADERS

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                existing = {k.lower() for k, _ in message.get("headers", [])}
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (k, v) for k, v in wanted if k not in existing
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(crm: FaceCRM | None = None, settings: Settings | None = None) -> FastAPI:
    """The application over `crm` (default: a `FaceCRM` on the configured database)."""
    settings = settings or (crm.settings if crm else get_settings())
    crm = crm or FaceCRM(settings, migrate=True)  # the server's start migrates (not workers)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        retention.start_scheduler(crm, stop)  # hourly purge while the server runs
        yield
        stop.set()

    app = FastAPI(
        lifespan=lifespan,
        title="facecrm",
        version=__version__,
        description="Opt-in face recognition for retail customer service.",
        openapi_url="/openapi.json",
        # Swagger UI and ReDoc load their scripts from a CDN: not on the console's origin.
        # The schema stays at /openapi.json for any API tool to read.
        docs_url=None,
        redoc_url=None,
    )
    app.state.crm = crm
    app.state.metrics = Registry()
    app.state.alerts = AlertService(crm, metrics=app.state.metrics)
    app.state.lookup_limiter = RateLimiter(settings.lookup_per_minute, 60.0)
    app.state.login_guard = LoginGuard()
    problems.install(app)
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)

    app.include_router(console.router)
    app.mount("/static", StaticFiles(directory=console.STATIC_DIR), name="static")

    @app.exception_handler(console.LoginRequired)
    async def _login(_: Request, __: console.LoginRequired) -> Response:
        return RedirectResponse("/console/login", status_code=303)

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/console/", status_code=303)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    def metrics() -> Response:
        """Prometheus metrics (counts and latencies only: no personal data)."""
        return Response(app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/healthz", tags=["operations"])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(SecurityHeaders)
    return app
