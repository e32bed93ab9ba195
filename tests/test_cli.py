"""The `facecrm` command line, run in-process (the `cli` fixture); one test, the heaviest
command, runs the real entry point as a subprocess."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Cli


def facecrm(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m facecrm ARGS`: the real entry point, in its own process."""
    env = {**os.environ, "FACECRM_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "facecrm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture()
def data_dir(tmp_path: Path, model_cache: Path) -> Path:
    data = tmp_path / "data"
    (data / "cache").mkdir(parents=True)
    (data / "cache" / "models").symlink_to(model_cache, target_is_directory=True)
    return data


def test_enroll_identify_list_show_delete(cli: Cli, data_dir: Path, faces_dir: Path) -> None:
    ids = faces_dir / "identities"
    enrolled = cli(
        data_dir,
        "enroll",
        "Barack Obama",
        str(ids / "barack_obama/1.jpg"),
        str(ids / "barack_obama/2.jpg"),
        "--consent",
    )
    assert enrolled.returncode == 0, enrolled.stderr
    assert "2 template(s)" in enrolled.stdout

    found = cli(data_dir, "identify", str(faces_dir / "scenes/obama_and_biden.jpg"), "--json")
    assert found.returncode == 0, found.stderr
    faces = json.loads(found.stdout)["faces"]
    named = [f["customer"] for f in faces if f["customer"] != "unknown"]
    assert [c["name"] for c in named] == ["Barack Obama"]
    assert len(faces) - len(named) >= 1  # Biden is not enrolled: unknown
    customer_id = named[0]["id"]

    listed = cli(data_dir, "customers", "list")
    assert customer_id in listed.stdout and "Barack Obama" in listed.stdout

    shown = cli(data_dir, "customers", "show", customer_id)
    assert "in_store_recognition" in shown.stdout and "active" in shown.stdout

    erased = cli(data_dir, "customers", "delete", customer_id, "--yes")
    assert erased.returncode == 0, erased.stderr
    again = cli(data_dir, "identify", str(ids / "barack_obama/3.jpg"), "--json")
    assert [f["customer"] for f in json.loads(again.stdout)["faces"]] == ["unknown"]


def test_enroll_without_consent_stores_nothing(cli: Cli, data_dir: Path, faces_dir: Path) -> None:
    photo = str(faces_dir / "identities/rose_leslie/1.jpg")
    refused = cli(data_dir, "enroll", "Rose", photo, input="n\n")
    assert refused.returncode == 1
    assert "no consent" in refused.stderr
    assert "Rose" not in cli(data_dir, "customers", "list").stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"not an image at all", "not a recognised image")],
)
def test_bad_photos_are_refused(
    cli: Cli, data_dir: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    result = cli(data_dir, "enroll", "Nobody", str(bad), "--consent")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert cli(data_dir, "identify", str(bad)).returncode == 1


def test_quality_gate_reason_is_shown(cli: Cli, data_dir: Path, faces_dir: Path) -> None:
    result = cli(data_dir, "enroll", "Two", str(faces_dir / "scenes/two_people.jpg"), "--consent")
    assert result.returncode == 1
    assert "multiple_faces" in result.stderr and "nothing was stored" in result.stderr


def test_unknown_customer_id(cli: Cli, data_dir: Path) -> None:
    result = cli(data_dir, "customers", "show", "nope")
    assert result.returncode == 1 and "no customer" in result.stderr


def test_eval_json_pairs_scores_and_plot(data_dir: Path, faces_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "file_x,file_y\n"
        "barack_obama/1.jpg,barack_obama/2.jpg\n"
        "barack_obama/1.jpg,joe_biden/1.jpg\n"
        "kit_harington/1.jpg,kit_harington/2.jpg\n"
    )
    scores, plot = tmp_path / "scores.csv", tmp_path / "roc.png"
    photos = len([p for p in (faces_dir / "identities").rglob("*") if p.is_file()])
    result = facecrm(  # the one run of the real entry point; two worker processes
        data_dir,
        "eval",
        str(faces_dir / "identities"),
        "--workers",
        "2",
        "--format",
        "json",
        "--pairs",
        str(pairs),
        "--scores",
        str(scores),
        "--plot",
        str(plot),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == photos and report["faces_found"] == photos
    assert report["workers"] == 2
    assert report["verification"]["pairs"] == 3
    assert report["verification"]["accuracy"] == 1.0
    assert report["verification"]["best_accuracy"] == 1.0
    assert "tar_at_far" in report["verification"]
    assert report["identification"]["rank1"] == 1.0
    assert set(report["identification"]["fnir_at_fpir"]) == {"0.01", "0.001"}
    assert report["seconds_per_image"] > 0
    rows = list(csv.DictReader(scores.open()))
    assert [r["match"] for r in rows] == ["1", "0", "1"]
    assert float(rows[0]["score"]) > float(rows[1]["score"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_rejects_unknown_pair_files(
    cli: Cli, data_dir: Path, faces_dir: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("barack_obama/1.jpg,nobody/1.jpg\n")
    identities = str(faces_dir / "identities")
    result = cli(data_dir, "eval", identities, "--pairs", str(pairs), "--workers", "1")
    assert result.returncode == 1 and "nobody/1.jpg" in result.stderr


def test_demo_runs_without_the_shared_photos(cli: Cli, data_dir: Path) -> None:
    env_free = cli(data_dir, "demo")
    assert env_free.returncode == 0, env_free.stderr
    assert "Demo complete" in env_free.stdout
    assert "Grace Hopper (similarity" in env_free.stdout
    assert not (data_dir / "facecrm.db").exists()  # the demo never touches real data


def test_admin_store_and_device_commands(cli: Cli, data_dir: Path) -> None:
    created = cli(data_dir, "admin", "create", "--username", "root", "--password", "s3cret-pass")
    assert created.returncode == 0, created.stderr
    assert (
        cli(
            data_dir, "admin", "create", "--username", "root", "--password", "s3cret-pass"
        ).returncode
        == 1
    )  # taken
    store = cli(data_dir, "stores", "add", "PAR1", "Paris Rivoli")
    assert store.returncode == 0, store.stderr
    store_id = store.stdout.split("id")[-1].strip()
    assert store_id in cli(data_dir, "stores", "list").stdout
    device = cli(data_dir, "devices", "add", "--store", store_id, "--kind", "agent")
    assert device.returncode == 0, device.stderr
    key = device.stdout.strip().splitlines()[-1]
    assert key.startswith("fcd_") and len(key) > 40
    assert key not in (data_dir / "facecrm.db").read_bytes().decode("latin-1")  # only its hash
    bad = cli(data_dir, "devices", "add", "--store", "nope", "--kind", "agent")
    assert bad.returncode == 1 and "no store" in bad.stderr


LIST_MODULES = """
import atexit, os, runpy, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write("\\n".join(sys.modules)))
sys.argv[0] = "facecrm"
runpy.run_module("facecrm", run_name="__main__")
"""
HEAVY = {"onnxruntime", "cv2", "fastapi", "facecrm.vision.pipeline", "facecrm.crm.service"}


@pytest.mark.parametrize(
    "args",
    [("--help",), ("stores", "qr", "Q1", "--svg", "{tmp}/qr.svg"), ("otp", "outbox", "--json")],
    ids=["help", "stores-qr", "otp-outbox"],
)
def test_quick_commands_load_no_models(
    cli: Cli, data_dir: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    """The CLI itself, `stores qr` and `otp outbox` start without the face models, OpenCV or
    the web app (they once took seconds to import them): what the process has loaded when
    it exits is checked, in a process of its own."""
    assert cli(data_dir, "stores", "add", "Q1", "Quick store").returncode == 0
    out = tmp_path / "modules.txt"
    env = {**os.environ, "FACECRM_DATA_DIR": str(data_dir), "MODULES_OUT": str(out)}
    argv = [a.format(tmp=tmp_path) for a in args]
    run = subprocess.run(
        [sys.executable, "-c", LIST_MODULES, *argv], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    loaded = set(out.read_text().split())
    assert "facecrm.cli" in loaded  # the list is the command's
    assert not loaded & HEAVY


def test_audit_verify_and_export(cli: Cli, data_dir: Path) -> None:
    import sqlite3

    assert cli(data_dir, "stores", "add", "A", "Store A").returncode == 0
    assert cli(data_dir, "stores", "add", "B", "Store B").returncode == 0
    ok = cli(data_dir, "audit", "verify")
    assert ok.returncode == 0 and "intact: 2 events" in ok.stdout
    lines = cli(data_dir, "audit", "export").stdout.strip().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["store_create", "store_create"]
    with sqlite3.connect(data_dir / "facecrm.db") as db:
        db.execute("UPDATE audit_events SET action = 'nothing' WHERE id = 1")
    bad = cli(data_dir, "audit", "verify")
    assert bad.returncode == 1 and "event 1: content altered" in bad.stderr


def test_keys_rotate(cli: Cli, data_dir: Path, faces_dir: Path) -> None:
    photo = str(faces_dir / "identities/rose_leslie/1.jpg")
    assert cli(data_dir, "enroll", "Rose", photo, "--consent").returncode == 0
    before = (data_dir / "master.keys").read_text()
    rotated = cli(data_dir, "keys", "rotate", "--retire")
    assert rotated.returncode == 0, rotated.stderr
    assert "1 re-wrapped" in rotated.stdout
    after = (data_dir / "master.keys").read_text()
    old_id = next(line for line in before.splitlines() if not line.startswith("#")).split(":")[0]
    assert old_id not in after and old_id in rotated.stdout
    found = cli(data_dir, "identify", str(faces_dir / "identities/rose_leslie/2.jpg"), "--json")
    assert json.loads(found.stdout)["faces"][0]["customer"]["name"] == "Rose"


def test_admin_disable_enable_password_delete_and_device_revoke(cli: Cli, data_dir: Path) -> None:
    from facecrm.crm import accounts, db
    from facecrm.crm.models import Device, StaffUser

    root = cli(data_dir, "admin", "create", "--username", "root", "--password", "root-pass1")
    assert root.returncode == 0, root.stderr
    store = cli(data_dir, "stores", "add", "S1", "Store").stdout.split("id")[-1].strip()
    made = cli(
        data_dir,
        "admin",
        "create",
        "--username",
        "Bea",
        "--password",
        "bea-pass1",
        "--role",
        "associate",
        "--store",
        store,
    )
    assert made.returncode == 0, made.stderr
    assert (
        cli(
            data_dir,
            "admin",
            "create",
            "--username",
            "BEA",
            "--password",
            "bea-pass1",
            "--role",
            "associate",
        ).returncode
        == 1
    )  # usernames ignore case
    chain_wide = cli(
        data_dir,
        "admin",
        "create",
        "--username",
        "boss",
        "--password",
        "boss-pass1",
        "--store",
        store,
    )
    assert chain_wide.returncode == 1 and "chain-wide" in chain_wide.stderr
    device = cli(data_dir, "devices", "add", "--store", store, "--kind", "pos")
    device_id = device.stdout.split("(")[1].split(")")[0]

    assert cli(data_dir, "admin", "disable", "bea").returncode == 0
    assert cli(data_dir, "admin", "password", "bea", "--password", "new-pass-2").returncode == 0
    assert cli(data_dir, "admin", "password", "bea", "--password", "short").returncode == 1
    assert cli(data_dir, "devices", "revoke", device_id).returncode == 0
    missing = cli(data_dir, "admin", "disable", "nobody")
    assert missing.returncode == 1 and "no staff user" in missing.stderr
    engine = db.make_engine(f"sqlite:///{data_dir / 'facecrm.db'}")
    with db.session_factory(engine)() as session:
        bea = accounts.find_staff(session, "bea")
        assert not bea.active and bea.token_version == 2  # disable, then the password
        assert session.get(Device, device_id).revoked_at is not None  # type: ignore[union-attr]
    assert cli(data_dir, "admin", "enable", "bea").returncode == 0
    with db.session_factory(engine)() as session:
        assert accounts.authenticate(session, "Bea", "new-pass-2") is not None
    last = cli(data_dir, "admin", "delete", "root", "--yes")
    assert last.returncode == 1 and "last active administrator" in last.stderr
    assert cli(data_dir, "admin", "delete", "bea", "--yes").returncode == 0
    with db.session_factory(engine)() as session:
        assert {u.username for u in session.query(StaffUser)} == {"root"}
    engine.dispose()
    trail = [
        json.loads(line)["action"]
        for line in cli(data_dir, "audit", "export").stdout.split("\n")
        if line
    ]
    assert {
        "staff_disable",
        "staff_password",
        "staff_enable",
        "staff_delete",
        "device_revoke",
    } <= set(trail)


def test_audit_fingerprint_is_how_searches_are_audited(cli: Cli, data_dir: Path) -> None:
    """An auditor checks whether a text was searched without the trail holding the text."""
    one = cli(data_dir, "audit", "fingerprint", "Ada  LOVELACE")
    two = cli(data_dir, "audit", "fingerprint", "ada lovelace")
    other = cli(data_dir, "audit", "fingerprint", "ada lovelac")
    assert one.returncode == 0, one.stderr
    assert one.stdout == two.stdout != other.stdout
    assert re.fullmatch(r"[0-9a-f]{32}\n", one.stdout)  # a keyed digest: nothing of the text
    bad = cli(data_dir, "audit", "export", "--since", "yesterday")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
