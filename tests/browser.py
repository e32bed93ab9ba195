"""Launching Debian's Chromium for browser tests (Playwright cannot download browsers here)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from facecrm.config import load
from facecrm.vision.image import read_image

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CAMERA_PHOTO = "identities/kit_harington/1.jpg"  # what the `browser` fixture's camera shows

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


def write_y4m(image: np.ndarray, path: Path, frames: int = 10) -> None:
    """A short raw video of one RGB image, for Chromium's fake camera."""
    bgr = cv2.cvtColor(cv2.resize(image, (640, 480)), cv2.COLOR_RGB2BGR)
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes()
    with path.open("wb") as fh:
        fh.write(b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n")
        for _ in range(frames):
            fh.write(b"FRAME\n" + i420)


@contextmanager
def chromium(*extra_args: str) -> Iterator[Browser]:
    """Headless Chromium with a fake camera that needs no permission prompt, plus
    `extra_args` for this one browser (Chromium reads its camera file at launch, so a test
    that wants another clip, `--use-file-for-fake-video-capture=<clip.y4m>`, launches its
    own). Playwright's sync API runs one at a time: not inside the `browser` fixture's."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=[*CHROMIUM_ARGS, *extra_args]
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def browser_with_camera(photo: Path, workdir: Path) -> Iterator[Browser]:
    """Headless Chromium whose fake camera shows `photo` (for the enrollment pages).

    The conftest's `browser` fixture is this, one per test module: a page that never asks
    for the camera does not notice it.
    """
    camera = workdir / "camera.y4m"
    write_y4m(read_image(photo, load()), camera)
    with chromium(f"--use-file-for-fake-video-capture={camera}") as browser:
        yield browser


def new_context(browser: Browser, base_url: str, timeout_ms: float = 20_000) -> BrowserContext:
    """A fresh browser profile (no cookies) on the test server, allowed the fake camera,
    with a timeout that suits a loaded 2-core machine. The caller closes it."""
    context = browser.new_context(base_url=base_url, permissions=["camera"])
    context.set_default_timeout(timeout_ms)
    return context


def page_errors(page: Page) -> list[str]:
    """The page's script errors and Content Security Policy refusals, as they happen (a
    test asserts the list is empty at its end)."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return errors


def log_in(page: Page, username: str, password: str) -> None:
    """Fill and send the console's log-in form (the caller checks where it lands)."""
    page.goto("/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def wait_until(page: Page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression until it is truthy.

    Not `page.wait_for_function`: when its first try is false it polls by evaluating the
    string inside the page, which the console's CSP (no 'unsafe-eval') refuses, so it
    failed whenever the camera was slower than the first try. `page.evaluate` goes
    through the DevTools protocol, which the page's policy does not govern.
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {expression}")
        time.sleep(0.05)
