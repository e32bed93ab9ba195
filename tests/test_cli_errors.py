"""The CLI's one error translation: refused -> exit 1 and one line, usage -> exit 2.

Run as a real `python -m facecrm` subprocess (what a user sees, including any traceback)
with a temporary FACECRM_DATA_DIR; one case runs in-process through Typer's CliRunner,
which goes through the same root command.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facecrm import config
from facecrm.cli import app

PASSWORD = "hunter2-not-for-logs"


def facecrm(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FACECRM_DATA_DIR": str(data_dir), "COLUMNS": "200", **env}
    for name in ("FACECRM_MASTER_KEY", "FACECRM_DATABASE_URL"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "facecrm", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "key",
    [
        "mk-1:" + base64.b64encode(b"sixteen byte key").decode(),  # 16 bytes, not 32
        "mk-1:not base64 at all!",
        base64.b64encode(b"k" * 32).decode(),  # no id
    ],
    ids=["short", "not-base64", "no-id"],
)
def test_bad_master_key_is_one_line(tmp_path: Path, key: str) -> None:
    result = facecrm(tmp_path, "customers", "list", FACECRM_MASTER_KEY=key)
    assert result.returncode == 1
    line = one_error_line(result)
    assert "FACECRM_MASTER_KEY" in line
    assert key.split(":", 1)[-1] not in line  # the secret is not echoed
    assert not (tmp_path / "facecrm.db").exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FACECRM_MAX_UPLOAD_BYTES", "0"),
        ("FACECRM_PORT", "-1"),
        ("FACECRM_TARGET_FMR", "1.5"),
        ("FACECRM_LOOKUP_PER_MINUTE", "-5"),
    ],
)
def test_out_of_range_numbers_are_refused_at_load(tmp_path: Path, name: str, value: str) -> None:
    result = facecrm(tmp_path, "customers", "list", **{name: value})
    assert result.returncode == 1
    assert name in one_error_line(result)
    assert not (tmp_path / "facecrm.db").exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url", "FACECRM_DATABASE_URL"),
        ("nosuchdb://host/db", "FACECRM_DATABASE_URL"),
        (f"postgresql+psycopg://facecrm:{PASSWORD}@127.0.0.1:1/facecrm", "database"),
        ("sqlite:///{file}/sub/facecrm.db", "cannot create the database"),
    ],
    ids=["garbage", "unknown-dialect", "unreachable-postgres", "sqlite-under-a-file"],
)
def test_bad_database_url_is_one_line(tmp_path: Path, url: str, says: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = facecrm(tmp_path, "customers", "list", FACECRM_DATABASE_URL=url.format(file=blocker))
    assert result.returncode == 1
    line = one_error_line(result)
    assert says in line and PASSWORD not in line


def test_unknown_customer_id_is_refused(tmp_path: Path) -> None:
    result = facecrm(tmp_path, "customers", "show", "nope")
    assert result.returncode == 1
    assert "no customer" in one_error_line(result) and "(not_found)" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["customers", "show", "--bogus", "x"],
        ["customers", "show"],
        ["eval", ".", "--format", "xml"],
        ["eval", ".", "--scores", "scores.csv"],
    ],
    ids=["unknown-option", "missing-argument", "bad-option-value", "option-needs-another"],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = facecrm(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Usage:" in result.stderr
    assert not (tmp_path / "facecrm.db").exists()


def test_cli_runner_goes_through_the_same_translation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_settings", None)  # the command replaces the settings
    monkeypatch.delenv("FACECRM_MASTER_KEY", raising=False)
    monkeypatch.delenv("FACECRM_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path), "customers", "show", "nope"])
    assert result.exit_code == 1, result.output
    assert "error: no customer" in result.stderr
    assert isinstance(result.exception, SystemExit)  # an exit code, not the NotFoundError
