"""The REST API's routes, in one place, for `facecrm.server` to mount under `API_PREFIX`."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from facecrm.api.routes import (
    activity,
    admin,
    agent,
    analytics,
    audit,
    auth,
    consents,
    customers,
    dashboard,
    disputes,
    payments,
    readiness,
    recognition,
    snapshots,
    stores,
)
from facecrm.config import API_PREFIX

API_ROUTERS: tuple[APIRouter, ...] = (
    auth.router,
    admin.router,
    customers.router,
    consents.router,
    recognition.router,
    activity.router,
    agent.router,
    analytics.router,
    dashboard.router,
    audit.router,
    readiness.router,
    disputes.router,
    stores.router,
    snapshots.router,
    payments.router,
)


def include(app: FastAPI) -> None:
    """Mount every API route on `app` under `API_PREFIX`."""
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
