"""Every role (and device kind) against every API endpoint, in its own and another store."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.routing import APIRoute

from facecrm.api.router import API_ROUTERS
from facecrm.config import API_PREFIX, Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import GRANTS, SYSTEM, Permission
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

PASSWORD = "matrix-password"
ROLES = ["admin", "manager", "associate", "auditor"]
DEVICES = ["agent", "pos"]
OPEN = {"/api/v1/auth/token"}


def required_permission(route: APIRoute) -> Permission | None:
    """The permission an endpoint's `allow(...)` dependency demands, if any."""
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        for cell in getattr(dep.call, "__closure__", None) or ():
            if isinstance(cell.cell_contents, Permission):
                return cell.cell_contents
        stack.extend(dep.dependencies)
    return None


@pytest.fixture(scope="module")
def world(module_settings: Settings, pipeline: FacePipeline) -> Iterator[dict]:
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        a = accounts.create_store(session, "A", "A", SYSTEM)
        b = accounts.create_store(session, "B", "B", SYSTEM)
        for role in ROLES:
            accounts.create_staff(
                session,
                role,
                PASSWORD,
                role,
                [] if role in {"admin", "auditor"} else [a.id],
                principal=SYSTEM,
            )
        keys = {
            kind: accounts.create_device(session, a.id, kind, principal=SYSTEM)[1]
            for kind in DEVICES
        }
        ids = {"a": a.id, "b": b.id}
    app = create_app(crm)
    with serve(app) as url:
        headers = {}
        for role in ROLES:
            token = httpx.post(
                f"{url}/api/v1/auth/token", data={"username": role, "password": PASSWORD}
            ).json()["access_token"]
            headers[role] = {"Authorization": f"Bearer {token}"}
        for kind, key in keys.items():
            headers[kind] = {"X-API-Key": key}
        routes = [
            (API_PREFIX + r.path, r)
            for router in API_ROUTERS
            for r in router.routes
            if isinstance(r, APIRoute) and API_PREFIX + r.path not in OPEN
        ]
        assert len(routes) > 30
        yield {"url": url, "headers": headers, "routes": routes, **ids}
    crm.engine.dispose()


def calls(world: dict) -> Iterator[tuple[str, str, str]]:
    for full_path, route in world["routes"]:
        path = re.sub(r"\{store_id\}", world["a"], full_path)
        path = re.sub(r"\{[a-z_]+_id\}", "1", path)
        path = path.replace("{purpose}", "marketing")
        for method in route.methods:
            yield method, path, full_path


def test_every_endpoint_needs_a_principal(world: dict) -> None:
    for method, path, _ in calls(world):
        r = httpx.request(method, world["url"] + path, timeout=30)
        assert r.status_code == 401, (method, path, r.status_code)


@pytest.mark.parametrize("who", ROLES + DEVICES)
def test_role_matrix(world: dict, who: str) -> None:
    granted = GRANTS[who]
    checked = 0
    for full_path, route in world["routes"]:
        permission = required_permission(route)
        if permission is None:
            continue  # /me: any authenticated principal
        for method, path, _ in calls({**world, "routes": [(full_path, route)]}):
            with httpx.stream(
                method, world["url"] + path, headers=world["headers"][who], timeout=60
            ) as r:  # an SSE stream is closed after its status
                status = r.status_code
                text = "" if path.endswith("/stream") and status == 200 else r.read().decode()
            assert status != 500, (who, method, path, text)
            if permission in granted:
                assert status != 403 or "store" in text, (who, method, path, text)
            else:
                assert status == 403, (who, method, path, status, text)
            checked += 1
    assert checked > 30


STORE_SCOPED = [
    ("POST", "/api/v1/visits", {"json": {"customer_id": "x", "store_id": "{b}"}}),
    (
        "POST",
        "/api/v1/identify",
        {"data": {"store_id": "{b}"}, "files": {"image": ("x.jpg", b"x", "image/jpeg")}},
    ),
    ("POST", "/api/v1/devices", {"json": {"store_id": "{b}", "kind": "agent"}}),
    ("POST", "/api/v1/shifts/{b}", {}),
    ("PUT", "/api/v1/stores/{b}/config", {"json": {"rules": {}}}),
    ("POST", "/api/v1/stores/{b}/snapshots", {"json": {"camera": "door"}}),
    ("POST", "/api/v1/customers/x/interests", {"json": {"store_id": "{b}", "product": "p"}}),
]


@pytest.mark.parametrize("who", ["manager", "associate", "agent", "pos"])
@pytest.mark.parametrize(("method", "path", "body"), STORE_SCOPED)
def test_other_store_is_forbidden(
    world: dict, who: str, method: str, path: str, body: dict
) -> None:
    def fill(value: object) -> object:
        if isinstance(value, str):
            return value.replace("{b}", world["b"])
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    r = httpx.request(
        method, world["url"] + fill(path), headers=world["headers"][who], timeout=60, **fill(body)
    )  # type: ignore[arg-type]
    assert r.status_code == 403, (who, method, path, r.status_code, r.text)
