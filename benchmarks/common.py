"""Shared helpers for the benchmark scripts: where the face data is, machine info, a server."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def faces_dir() -> Path:
    """`../shared/faces` beside the repository, or `$FACECRM_FACES_DIR`."""
    path = Path(os.environ.get("FACECRM_FACES_DIR", REPO.parent / "shared" / "faces"))
    if not (path / "identities").is_dir():
        sys.exit(f"face data not found at {path}; set FACECRM_FACES_DIR")
    return path


def identity_tree_with_distractors(faces: Path, more: bool = False) -> Path:
    """A temporary identity-folder tree: every identity plus each distractor as its own.

    `more` adds the identities of `faces/more/identities` (relatives, look-alikes, years apart).
    """
    root = Path(tempfile.mkdtemp(prefix="facecrm-set-"))
    sources = [faces / "identities"] + ([faces / "more" / "identities"] if more else [])
    for folder in sorted(f for source in sources for f in source.iterdir() if f.is_dir()):
        (root / folder.name).symlink_to(folder, target_is_directory=True)
    for image in sorted((faces / "distractors").iterdir()):
        (root / f"distractor_{image.stem}").mkdir()
        (root / f"distractor_{image.stem}" / image.name).symlink_to(image)
    return root


def machine() -> str:
    """One line describing this machine, for the figures' provenance."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_subprocess(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`facecrm serve` in its own process with `env`, once healthy: (base URL, pid)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "facecrm", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
