"""Launching Debian's Chromium for browser tests (Playwright cannot download browsers here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


def chromium_path() -> str:
    candidates = (
        os.environ.get("FACECRM_CHROMIUM", ""),
        "/usr/lib/chromium/chromium",
        "/usr/bin/chromium",
        shutil.which("chromium") or "",
    )
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(
        "Chromium not found: scripts/test installs Debian's chromium (or set FACECRM_CHROMIUM)"
    )
