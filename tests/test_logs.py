"""`facecrm serve`'s logs, from a real server process: JSON lines without personal data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server import free_port

SECRET_EMAIL = "secret.person@example.com"
UPLOAD_NAME = "zq-upload-name-of-Ada-Lovelace.jpg"
PASSWORD = "correct horse battery"

# `facecrm serve` exactly as installed, plus one route standing in for any bug in an upload
# handler: it fails with the upload's file name in the exception message.
SERVE_WITH_A_FAULT = """
import sys
from fastapi import File, UploadFile
import facecrm.server as web
from facecrm import cli

real_create_app = web.create_app

def create_app(*args, **kwargs):
    app = real_create_app(*args, **kwargs)

    @app.post("/test/fail")
    def fail(image: UploadFile = File()) -> None:
        raise RuntimeError(f"could not store {image.filename}")

    return app

web.create_app = create_app
cli.app(["serve", "--port", sys.argv[1]])
"""


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "FACECRM_DATA_DIR": str(data_dir)}


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    data_dir = tmp_path / "data"
    create_admin = ("admin", "create", "--username", "root", "--password", PASSWORD)
    subprocess.run(
        [sys.executable, "-m", "facecrm", *create_admin],
        env=_env(data_dir),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_WITH_A_FAULT, str(port)],
        env=_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"the server did not start: {process.communicate()[0]}")
            time.sleep(0.1)
    try:
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_server_logs_are_json_lines_without_queries_or_upload_names(
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    url, process = server
    with httpx.Client(base_url=url, timeout=30) as client:
        token = client.post(
            "/api/v1/auth/token", data={"username": "root", "password": PASSWORD}
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        found = client.get("/api/v1/customers", params={"q": SECRET_EMAIL}, headers=auth)
        assert found.status_code == 200
        page = client.get("/console/customers", params={"q": SECRET_EMAIL})
        assert page.status_code == 303  # to the log-in page: still logged, without the query
        files = {"image": (UPLOAD_NAME, b"not a photo at all", "image/jpeg")}
        refused = client.post("/api/v1/customers/0123abcd/faces", files=files, headers=auth)
        assert refused.status_code in (404, 422)
        failed = client.post("/test/fail", files=files)
        assert failed.status_code == 500
    process.terminate()
    output = process.communicate(timeout=30)[0]

    print(output)  # shown when the test fails
    lines = [line for line in output.splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}\n\n{output}")
    assert "secret.person" not in output and "example.com" not in output, output
    assert UPLOAD_NAME not in output and "Ada-Lovelace" not in output, output

    access = [e["msg"] for e in entries if e["logger"] == "uvicorn.access"]
    assert any('"GET /api/v1/customers HTTP/1.1" 200' in m for m in access), access
    assert any('"GET /console/customers HTTP/1.1" 303' in m for m in access), access
    errors = [e for e in entries if e.get("error") == "RuntimeError"]
    assert errors, output  # the failure was logged, as JSON, with where it happened
    assert all(any(" in fail" in frame for frame in e["trace"]) for e in errors), errors
