"""Repository hygiene that no linter checks: a merge left half-done.

A conflict block (`<<<<<<<` ... `>>>>>>>`) in a Markdown file or a template breaks nothing
that runs, so nothing else would notice it: one sat in `benchmarks/README.md` for a stop.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "venv", "node_modules", "build", "dist", "__pycache__", ".mypy_cache"}
TEXT = {".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".html", ".js", ".css", ".json", ".yml"}
MARKER = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)


def _text_files(folder: Path) -> list[Path]:
    found = []
    for path in folder.iterdir():
        hidden_dir = path.name.startswith(".") and path.is_dir() and path.name != ".ci"
        if path.name in SKIP or hidden_dir:
            continue
        if path.is_dir():
            found.extend(_text_files(path))
        elif path.suffix in TEXT or path.parent.name == ".ci":
            found.append(path)
    return found


def test_no_file_holds_a_merge_conflict() -> None:
    files = _text_files(ROOT)
    assert any(p.name == "README.md" for p in files)  # the walk reaches the docs
    conflicted = [
        f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
        for path in files
        if (text := path.read_text(errors="replace"))
        for m in [MARKER.search(text)]
        if m is not None
    ]
    assert conflicted == []


def test_the_marker_pattern_finds_a_conflict() -> None:
    block = "text\n<<<<<<< HEAD\nours\n=======\ntheirs\n>>>>>>> branch\n"
    assert MARKER.search(block) is not None
    assert MARKER.search("a heading\n=======\n") is not None  # setext headings are not used
    assert MARKER.search("<<<<<<<< eight\n") is None
