"""Shared helpers for the benchmark scripts: where the face data is, machine info."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def faces_dir() -> Path:
    """`../shared/faces` beside the repository, or `$FACECRM_FACES_DIR`."""
    path = Path(os.environ.get("FACECRM_FACES_DIR", REPO.parent / "shared" / "faces"))
    if not (path / "identities").is_dir():
        sys.exit(f"face data not found at {path}; set FACECRM_FACES_DIR")
    return path


def identity_tree_with_distractors(faces: Path) -> Path:
    """A temporary identity-folder tree: every identity plus each distractor as its own."""
    root = Path(tempfile.mkdtemp(prefix="facecrm-set-"))
    for folder in sorted((faces / "identities").iterdir()):
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
