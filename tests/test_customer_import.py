"""Bringing a CRM's loyalty database in and out as CSV (issue 9, item 9), and the CLI's
listings (item 10): the service on SQLite and PostgreSQL, the CLI in process, the API on
a real server."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from conftest import Cli
from facecrm.config import Settings
from facecrm.crm import accounts, db, imports
from facecrm.crm.authz import SYSTEM, Principal
from facecrm.crm.errors import Forbidden, InvalidError
from facecrm.crm.models import AuditEvent, Customer, Role
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app

from server import serve

PASSWORD = "correct horse battery"
HEADER = "name,preferred_name,email,phone,loyalty_id,tier,notes\r\n"
GOOD = (
    HEADER
    + "Ada Lovelace,Ada,ada@example.com,+44 20 7946 0000,L-1,gold,likes red\r\n"
    + "Grace Hopper,,grace@example.com,,L-2,,\r\n"
    + "Walk In,,,,,,\r\n"
)


def _customers(crm: FaceCRM) -> dict[str | None, Customer]:
    with crm.sessions() as session:
        return {c.loyalty_id or c.name: c for c in session.scalars(select(Customer))}


def _events(crm: FaceCRM, action: str) -> list[AuditEvent]:
    with crm.sessions() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list(session.scalars(query))


def _count(crm: FaceCRM) -> int:
    with crm.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Customer)) or 0)


def test_import_creates_then_updates_by_loyalty_id(crm: FaceCRM) -> None:
    first = imports.import_csv(crm.sessions, SYSTEM, GOOD.encode())
    assert (first.created, first.updated, first.errors, first.applied) == (3, 0, [], True)
    ada = _customers(crm)["L-1"]
    assert (ada.name, ada.email, ada.tier, ada.notes) == (
        "Ada Lovelace",
        "ada@example.com",
        "gold",
        "likes red",
    )
    assert _customers(crm)["L-2"].tier == "standard"  # an empty cell: the default
    # the same file again: the loyalty ids update, the row without one creates again
    again = HEADER + "Ada King,,,,L-1,vip,\r\nWalk In,,,,,,\r\n"
    second = imports.import_csv(crm.sessions, SYSTEM, again.encode())
    assert (second.created, second.updated) == (1, 1)
    ada = _customers(crm)["L-1"]
    assert (ada.name, ada.tier) == ("Ada King", "vip")
    assert ada.email == "ada@example.com" and ada.notes == "likes red"  # empty: unchanged
    assert _count(crm) == 4
    assert [e.detail for e in _events(crm, "customer_import")] == [
        {"rows": 3, "created": 3, "updated": 0, "failed": 0}
        | {"dry_run": False, "atomic": False, "applied": True},
        {"rows": 2, "created": 1, "updated": 1, "failed": 0}
        | {"dry_run": False, "atomic": False, "applied": True},
    ]
    assert len(_events(crm, "customer_create")) == 4
    assert len(_events(crm, "customer_update")) == 1
    assert crm.verify_audit().ok


BAD = (
    HEADER
    + "Ada Lovelace,,ada@example.com,,L-1,gold,\r\n"
    + "Bad Mail,,not-an-address,,L-2,,\r\n"  # line 3
    + "Bad Tier,,,,L-3,platinum,\r\n"  # line 4
    + ",,,,L-4,,\r\n"  # line 5: no name
    + "Short Row,,\r\n"  # line 6
    + "Twin,,,,L-1,,\r\n"  # line 7: L-1 again
    + f"Long Phone,,,{'9' * 41},,,\r\n"  # line 8
    + "Grace Hopper,,,,L-9,,\r\n"
)


def test_bad_rows_are_reported_and_the_others_go_in(crm: FaceCRM) -> None:
    report = imports.import_csv(crm.sessions, SYSTEM, BAD.encode())
    assert [(e.row, e.column) for e in report.errors] == [
        (3, "email"),
        (4, "tier"),
        (5, "name"),
        (6, None),
        (7, "loyalty_id"),
        (8, "phone"),
    ]
    assert "e-mail" in report.errors[0].message and "row 2" in report.errors[4].message
    assert (report.created, report.updated, report.applied) == (2, 0, True)
    assert set(_customers(crm)) == {"L-1", "L-9"}  # nothing of a bad row was written
    assert _events(crm, "customer_import")[-1].detail["failed"] == 6
    assert len(_events(crm, "customer_create")) == 2
    assert crm.verify_audit().ok


@pytest.mark.parametrize("mode", ["atomic", "dry_run"])
def test_atomic_and_dry_run_write_nothing(crm: FaceCRM, mode: str) -> None:
    data = (BAD if mode == "atomic" else GOOD).encode()
    report = imports.import_csv(crm.sessions, SYSTEM, data, **{mode: True})
    assert not report.applied and _count(crm) == 0
    if mode == "dry_run":
        assert (report.created, report.updated, report.errors) == (3, 0, [])
    assert not _events(crm, "customer_create")  # the rolled-back rows' events went too
    (event,) = _events(crm, "customer_import")
    assert event.detail["applied"] is False and event.detail[mode] is True
    assert crm.verify_audit().ok


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"name,email,favourite_colour\r\nAda,,red\r\n", "unknown_columns"),
        (b"email\r\nada@example.com\r\n", "no_name"),
        (b"name,name\r\nAda,Ada\r\n", "duplicate_columns"),
        (b"name\r\n\xff\xfe\r\n", "not_utf8"),
        (b"name\r\nAda\x00Lovelace\r\n", "bad_csv"),
        (b"name\r\n" + b"x" * 200_000 + b"\r\n", "bad_csv"),  # a cell over csv's limit
    ],
)
def test_bad_files_are_refused_up_front(crm: FaceCRM, data: bytes, reason: str) -> None:
    with pytest.raises(InvalidError) as refused:
        imports.import_csv(crm.sessions, SYSTEM, data)
    assert refused.value.reason == reason
    assert _count(crm) == 0 and not _events(crm, "customer_import")


def test_import_is_bounded_and_for_admins(crm: FaceCRM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imports, "MAX_ROWS", 2)
    with pytest.raises(InvalidError) as refused:
        imports.import_csv(crm.sessions, SYSTEM, GOOD.encode())
    assert refused.value.reason == "too_many_rows"
    monkeypatch.setattr(imports, "MAX_BYTES", 10)
    with pytest.raises(InvalidError) as refused:
        imports.import_csv(crm.sessions, SYSTEM, GOOD.encode())
    assert refused.value.reason == "too_large"
    associate = Principal("staff", "s1", "ann", Role.ASSOCIATE, frozenset())
    manager = Principal("staff", "s2", "max", Role.MANAGER, frozenset())
    for principal in (associate, manager):
        with pytest.raises(Forbidden):
            imports.import_csv(crm.sessions, principal, b"name\r\nAda\r\n")
        with pytest.raises(Forbidden), db.transaction(crm.sessions) as session:
            imports.export_csv(session, principal)
    assert _count(crm) == 0


def test_export_round_trips_and_defuses_formulas(crm: FaceCRM) -> None:
    data = HEADER + 'Eve,,,+44 20 7946 0000,L-7,,"=HYPERLINK(""http://x"")"\r\n'
    imports.import_csv(crm.sessions, SYSTEM, (data + "Bob,,,,L-8,,-2+3\r\n").encode())
    with db.transaction(crm.sessions) as session:
        text = imports.export_csv(session, SYSTEM)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(imports.EXPORT_COLUMNS)
    eve, bob = rows
    assert eve["phone"] == "+44 20 7946 0000"  # a phone number is not a formula
    assert eve["notes"].startswith("'=") and bob["notes"] == "'-2+3"
    assert eve["id"] == _customers(crm)["L-7"].id
    assert _events(crm, "customer_list_export")[-1].detail == {"customers": 2}
    # an export goes back in as updates (its id column is ignored: loyalty_id matches)
    report = imports.import_csv(crm.sessions, SYSTEM, text.encode())
    assert (report.created, report.updated, report.errors) == (0, 2, [])


# -- the CLI ----------------------------------------------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    return {"FACECRM_DATABASE_URL": settings.database_url or ""}


def test_cli_import_export(cli: Cli, crm: FaceCRM, tmp_path: Path) -> None:
    settings, env = crm.settings, _env(crm.settings)
    source = tmp_path / "crm.csv"
    source.write_text(BAD)
    dry = cli(settings.data_dir, "customers", "import", str(source), "--dry-run", env=env)
    assert dry.returncode == 1 and "row 3, email: not an e-mail address" in dry.stderr
    assert "nothing written (dry run)" in dry.stdout and _count(crm) == 0
    done = cli(settings.data_dir, "customers", "import", str(source), "--json", env=env)
    assert done.returncode == 1  # some rows failed: a script notices
    report = json.loads(done.stdout)
    assert (report["created"], report["failed"], report["applied"]) == (2, 6, True)
    assert {k: report["errors"][1][k] for k in ("row", "column")} == {"row": 4, "column": "tier"}
    source.write_text(GOOD)
    ok = cli(settings.data_dir, "customers", "import", str(source), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "3 row(s): 2 new, 1 updated, 0 failed" in ok.stdout  # L-1 was in
    unknown = tmp_path / "other.csv"
    unknown.write_text("name,shoe_size\r\nAda,39\r\n")
    refused = cli(settings.data_dir, "customers", "import", str(unknown), env=env)
    assert refused.returncode == 1 and "unknown columns: shoe_size" in refused.stderr
    out = tmp_path / "out.csv"
    exported = cli(settings.data_dir, "customers", "export", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    assert (out.stat().st_mode & 0o777) == 0o600
    assert len(list(csv.DictReader(out.open()))) == _count(crm) == 4


def test_cli_listings_show_full_ids_and_json(cli: Cli, settings: Settings) -> None:
    data = settings.data_dir
    assert cli(data, "stores", "add", "NYC", "Broadway").returncode == 0
    cli(data, "admin", "create", "--username", "root", "--password", PASSWORD)
    (store,) = json.loads(cli(data, "stores", "list", "--json").stdout)
    assert cli(data, "devices", "add", "--store", store["id"], "--kind", "agent").returncode == 0
    customers = HEADER + "".join(f"Customer With A Long Name {n},,,,,,\r\n" for n in range(3))
    (settings.data_dir / "c.csv").write_text(customers)
    assert cli(data, "customers", "import", str(settings.data_dir / "c.csv")).returncode == 0
    for command, keys in (
        (("customers", "list"), {"id", "name", "templates", "enrolled"}),
        (("stores", "list"), {"id", "code", "name"}),
        (("devices", "list"), {"id", "store_id", "kind", "name", "created_at", "revoked_at"}),
        (("admin", "list"), {"id", "username", "role", "active", "stores"}),
    ):
        listed = json.loads(cli(data, *command, "--json").stdout)
        assert listed and all(set(row) == keys for row in listed), command
        narrow = cli(data, *command, env={"COLUMNS": "80"}).stdout
        for row in listed:  # every id whole on one line of an 80-column table
            assert row["id"] in narrow, (command, narrow)
    assert json.loads(cli(data, "admin", "list", "--json").stdout)[0]["role"] == "admin"


# -- the API on a real server ---------------------------------------------------------


@pytest.fixture()
def server(crm: FaceCRM) -> Iterator[tuple[str, dict[str, str]]]:
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "Store A", SYSTEM)
        for role in ("admin", "manager", "associate"):
            stores = [] if role == "admin" else [store.id]
            accounts.create_staff(session, role, PASSWORD, role, stores, principal=SYSTEM)
    with serve(create_app(crm)) as url:
        tokens = {
            role: httpx.post(
                f"{url}/api/v1/auth/token", data={"username": role, "password": PASSWORD}
            ).json()["access_token"]
            for role in ("admin", "manager", "associate")
        }
        yield url, tokens


def test_api_import_and_export(crm: FaceCRM, server: tuple[str, dict[str, str]]) -> None:
    url, tokens = server

    def client(role: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {tokens[role]}"}
        return httpx.Client(base_url=url, headers=auth, timeout=60)

    csv_type = {"Content-Type": "text/csv"}
    with client("manager") as manager:
        refused = manager.post("/api/v1/customers/import", content=GOOD, headers=csv_type)
        assert refused.status_code == 403
        assert manager.get("/api/v1/customers/export.csv").status_code == 403
    assert _count(crm) == 0
    with client("admin") as admin:
        r = admin.post(
            "/api/v1/customers/import", params={"dry_run": "true"}, content=GOOD, headers=csv_type
        )
        assert r.status_code == 200, r.text
        assert (r.json()["created"], r.json()["applied"]) == (3, False) and _count(crm) == 0
        r = admin.post(
            "/api/v1/customers/import",
            params={"atomic": "true"},
            files={"file": ("crm.csv", BAD.encode(), "text/csv")},
        )
        assert r.status_code == 200, r.text
        report = r.json()
        assert (report["failed"], report["applied"]) == (6, False) and _count(crm) == 0
        assert report["errors"][0] == {
            "row": 3,
            "column": "email",
            "message": report["errors"][0]["message"],
        }
        r = admin.post("/api/v1/customers/import", content=GOOD, headers=csv_type)
        assert r.json()["created"] == 3 and _count(crm) == 3
        r = admin.post(
            "/api/v1/customers/import", content=b"name,colour\r\nA,b\r\n", headers=csv_type
        )
        assert r.status_code == 422 and r.json()["reason"] == "unknown_columns"
        r = admin.post("/api/v1/customers/import", json={"name": "Ada"})
        assert r.status_code == 415
        exported = admin.get("/api/v1/customers/export.csv")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        assert exported.headers["cache-control"] == "no-store"
        assert len(list(csv.DictReader(io.StringIO(exported.text)))) == 3
    actors = {e.actor for e in _events(crm, "customer_import")}
    assert actors == {"staff:admin"}
