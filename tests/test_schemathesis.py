"""Property-based fuzzing of the whole API from its OpenAPI description: never a 500, and
every answer (errors too) has a documented status, content type and schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from facecrm.config import Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

# no 500; and every answer, refusals included, is one the schema documents
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


@pytest.mark.slow
def test_no_server_errors(settings: Settings, pipeline: FacePipeline, tmp_path: Path) -> None:
    crm = FaceCRM(settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        accounts.create_staff(session, "fuzz", "fuzz-password", "admin", principal=SYSTEM)
        accounts.create_store(session, "A", "Store A", SYSTEM)
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    with serve(create_app(crm)) as url:
        token = httpx.post(
            f"{url}/api/v1/auth/token", data={"username": "fuzz", "password": "fuzz-password"}
        ).json()
        result = subprocess.run(
            [
                st,
                "run",
                f"{url}/openapi.json",
                "--checks",
                CHECKS,
                "-H",
                f"Authorization: Bearer {token['access_token']}",
                "--max-examples",
                os.environ.get("FACECRM_FUZZ_EXAMPLES", "12"),
                "--exclude-path-regex",
                "stream|/auth/logout",  # a log-out would void the fuzzer's token
                "--seed",
                "20261123",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
    crm.engine.dispose()
    assert result.returncode == 0, result.stdout[-8000:]
    assert " passed" in result.stdout
