"""The server: one ASGI app with the REST API (`facecrm.api`) and the staff console (`facecrm.web`).

It sits above both so that they are siblings: the console may use the API's dependencies,
but nothing in `facecrm.api` knows that a console exists (tests/test_layers.py).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from facecrm import __version__
from facecrm.alerts import relay
from facecrm.alerts.cameras import CameraHealthService, start_checker
from facecrm.alerts.service import AlertService, payment_lock_alert
from facecrm.api import problems, router
from facecrm.api.middleware import FORM_OVERHEAD, BodyLimit, SecurityHeaders
from facecrm.config import Settings, get_settings
from facecrm.crm import retention
from facecrm.crm.payflow import LivenessFactory, PayFlow
from facecrm.crm.selfservice import SelfService
from facecrm.crm.service import FaceCRM
from facecrm.crm.snapshots import Snapshots
from facecrm.crm.throttle import LoginGuard, RateLimiter, database_counters
from facecrm.errors import ConfigError
from facecrm.logs import configure_logging
from facecrm.metrics import Registry
from facecrm.web import admin as admin_pages
from facecrm.web import consent_texts, console, enrollment_options, kiosk, readiness, till
from facecrm.web import dashboard as dashboard_pages
from facecrm.web import selfservice as self_pages
from facecrm.web import zones as zone_pages


def check_workers(settings: Settings, workers: int) -> None:
    """Several server processes need PostgreSQL: on SQLite the gallery, the live alert
    bus and the database's single writer belong to one process."""
    if workers > 1 and not settings.resolved_database_url.startswith("postgresql"):
        raise ConfigError(
            f"--workers {workers} needs PostgreSQL (FACECRM_DATABASE_URL=postgresql+psycopg://"
            "...): on SQLite one server process serves a data directory",
            reason="single_process",
        )


def worker_app() -> FastAPI:
    """One worker's app under `facecrm serve --workers N` (uvicorn imports it in each
    worker process); the parent has migrated the schema already."""
    configure_logging()
    return create_app(FaceCRM(get_settings()))


def create_app(
    crm: FaceCRM | None = None,
    settings: Settings | None = None,
    *,
    liveness: LivenessFactory | None = None,
) -> FastAPI:
    """The application over `crm` (default: a `FaceCRM` on the configured database);
    `liveness` makes face checkout's liveness stage (default: the shipped one)."""
    settings = settings or (crm.settings if crm else get_settings())
    crm = crm or FaceCRM(settings, migrate=True)  # the server's start migrates (not workers)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        app.state.alerts.bus.start()  # PostgreSQL: other server processes' alerts
        retention.start_scheduler(crm, stop)  # hourly purge while the server runs
        start_checker(app.state.cameras, stop)  # silent cameras (idempotent across processes)
        app.state.selfservice.start_purger(stop)  # expired one-time codes, even when idle
        yield
        stop.set()
        app.state.alerts.bus.stop()

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
    app.state.alerts = AlertService(crm, relay.bus_for(crm), metrics=app.state.metrics)
    app.state.cameras = CameraHealthService(crm, app.state.alerts, app.state.metrics)
    app.state.snapshots = Snapshots(crm.sessions)  # zone drawing: pictures in memory only
    # limits in the database: every server process on it counts against the same budget
    counters = database_counters(crm.engine, settings)
    app.state.lookup_limiter = RateLimiter(
        settings.lookup_per_minute, 60.0, counters=counters, scope="lookup"
    )
    app.state.pos_limiter = RateLimiter(
        settings.pos_lookup_per_minute, 60.0, counters=counters, scope="pos_lookup"
    )
    app.state.login_guard = LoginGuard.from_settings(settings, counters=counters)
    app.state.selfservice = SelfService(crm, counters)  # customers on their own phones
    app.state.payflow = PayFlow(crm, liveness, on_lock=payment_lock_alert(app.state.alerts))
    app.state.decide_limiter = RateLimiter(
        settings.agent_decide_per_minute, 60.0, counters=counters, scope="agent_decide"
    )
    problems.install(app)
    router.include(app)

    app.include_router(console.router)
    app.include_router(admin_pages.router)
    app.include_router(readiness.router)
    app.include_router(dashboard_pages.router)
    app.include_router(zone_pages.router)
    app.include_router(kiosk.router)
    app.include_router(till.router)
    app.include_router(consent_texts.router)
    app.include_router(enrollment_options.router)
    app.include_router(self_pages.router)
    app.include_router(self_pages.console_router)
    app.mount("/static", StaticFiles(directory=console.STATIC_DIR), name="static")

    @app.exception_handler(console.LoginRequired)
    async def _login(_: Request, __: console.LoginRequired) -> Response:
        return RedirectResponse("/console/login", status_code=303)

    @app.exception_handler(console.KioskOnly)
    async def _kiosk_only(_: Request, exc: console.KioskOnly) -> Response:
        return RedirectResponse(exc.home, status_code=303)

    @app.exception_handler(kiosk.DeviceLoginRequired)
    async def _device_login(_: Request, exc: kiosk.DeviceLoginRequired) -> Response:
        return RedirectResponse(exc.login, status_code=303)

    @app.exception_handler(self_pages.SelfLoginRequired)
    async def _self_login(request: Request, __: self_pages.SelfLoginRequired) -> Response:
        response = console.templates.TemplateResponse(request, "self_login.html", {})
        response.status_code = 401
        response.delete_cookie(self_pages.COOKIE, path="/self")
        return response

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
