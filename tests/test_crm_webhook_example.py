"""The README's webhook-to-CRM receiver (examples/crm_webhook.py) takes what facecrm's
real sender signs, and refuses forgeries and replays."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from facecrm.alerts import webhooks

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "crm_webhook.py"
SECRET = "s3cret-from-the-store-config"
ALERT: dict[str, object] = {
    "id": 7,
    "store_id": "store-a",
    "customer_id": "c" * 32,
    "rule": "vip_arrival",
    "created_at": "2026-11-26T10:00:00+00:00",
}


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crm_webhook", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def receiver(example: ModuleType, capsys: pytest.CaptureFixture[str]) -> Iterator[str]:
    from http.server import HTTPServer

    server = HTTPServer(("127.0.0.1", 0), example.handler(SECRET, {"c" * 32: "L-1815"}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


def test_the_receiver_takes_facecrm_deliveries(
    receiver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = webhooks.Policy(frozenset({"127.0.0.1"}), allow_http=True)
    assert webhooks.send(receiver, SECRET, ALERT, policy, attempts=1)
    out = capsys.readouterr().out
    assert '"loyalty_id": "L-1815"' in out and '"facecrm-alert-7"' in out
    assert not webhooks.send(receiver, "another store's secret", ALERT, policy, attempts=1)


def test_the_receiver_refuses_tampering_and_replays(receiver: str) -> None:
    body = b'{"id":7,"customer_id":"' + b"c" * 32 + b'"}'
    now = str(int(time.time()))
    good = {
        "X-Facecrm-Timestamp": now,
        "X-Facecrm-Signature": webhooks.signature(SECRET, now, body),
    }
    assert httpx.post(receiver, content=body, headers=good).status_code == 204
    assert httpx.post(receiver, content=body + b" ", headers=good).status_code == 401
    old = str(int(time.time()) - 3600)
    replay = {
        "X-Facecrm-Timestamp": old,
        "X-Facecrm-Signature": webhooks.signature(SECRET, old, body),
    }
    assert httpx.post(receiver, content=body, headers=replay).status_code == 401


def test_the_readme_shows_the_example_s_verify(example: ModuleType) -> None:
    import inspect

    readme = (EXAMPLE.parent.parent / "README.md").read_text(encoding="utf-8")
    assert inspect.getsource(example.verify) in readme
