"""A real uvicorn server in a background thread, for API and browser tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: FastAPI, port: int | None = None) -> Iterator[str]:
    """Serve `app` on localhost (a free port unless given); yields the base URL."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    # one request first, with room for a loaded machine: the tests' own first requests
    # then meet a warm server instead of httpx's 5 s default timeout (any answer will
    # do: some test apps have no /healthz)
    httpx.get(f"{url}/healthz", timeout=60)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def staff_client(url: str, username: str, password: str) -> httpx.Client:
    """A client of the API at `url` that carries `username`'s bearer token."""
    r = httpx.post(
        f"{url}/api/v1/auth/token",
        data={"username": username, "password": password},
        timeout=30,  # a first request on a loaded machine can take more than 5 s
    )
    assert r.status_code == 200, r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def answer_values(document: Any, key: str = "") -> Iterator[str]:
    """Every value of a JSON answer as text, except ids and timestamps.

    Those are random, so they hold any short digit string by chance (a store id's hex once
    held a customer's four step-up digits): a check that a secret was left out reads the rest.
    """
    if isinstance(document, dict):
        for k, v in document.items():
            yield from answer_values(v, k)
    elif isinstance(document, list):
        for v in document:
            yield from answer_values(v, key)
    elif document is not None and not (key == "id" or key.endswith(("_id", "_at"))):
        yield str(document)
