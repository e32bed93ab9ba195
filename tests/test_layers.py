"""Which package may import which: the layering the code map promises, checked statically.

Every `import` under `src/facecrm` (at module level, inside functions and under
`TYPE_CHECKING` alike) is parsed and resolved to the module it names; a forbidden edge fails
with its file and line. The layers, bottom up:

* `vision` (photos to templates) knows nothing of customers, the server or the console: the
  store agent runs it without the server installed;
* `api` (REST) and `web` (console) are siblings: the console may use the API's dependencies,
  but nothing in `api` knows that a console exists; `facecrm.server` mounts both.

Settings flow the same way: only entry points read the process-wide settings
(`get_settings`/`configure`); everything below receives a `Settings` from its caller. The
API prefix is written once, in `facecrm.config`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import facecrm

SRC = Path(facecrm.__file__).resolve().parent

# package -> packages (or modules) it must never import
FORBIDDEN = {
    "facecrm.api": ("facecrm.web", "facecrm.server", "facecrm.cli"),
    "facecrm.web": ("facecrm.server", "facecrm.cli"),
    "facecrm.vision": (
        "facecrm.crm",
        "facecrm.api",
        "facecrm.web",
        "facecrm.server",
        "facecrm.cli",
        "facecrm.agent",
        "facecrm.alerts",
    ),
    "facecrm.gallery": ("facecrm.crm", "facecrm.api", "facecrm.web", "facecrm.server"),
    "facecrm.agent": ("facecrm.crm", "facecrm.api", "facecrm.web", "facecrm.server"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module `path` imports (a `from a import b` yields both `a` and `a.b`)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(forbidden: dict[str, tuple[str, ...]] = FORBIDDEN) -> list[str]:
    """`file:line: module -> imported` for each import statement that crosses a layer."""
    found: dict[tuple[Path, int], str] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        banned = [t for layer, ts in forbidden.items() if _within(module, layer) for t in ts]
        for name, line in imports(path):
            if any(_within(name, target) for target in banned):
                where = f"{path.relative_to(SRC.parent)}:{line}"
                found.setdefault((path, line), f"{where}: {module} -> {name}")
    return [found[k] for k in sorted(found)]


def test_layers_import_only_downwards() -> None:
    assert violations() == []


def test_the_check_sees_every_kind_of_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parser finds plain, from-, relative and function-local imports (a check that
    could not see one would pass on any code)."""
    fake = tmp_path / "facecrm"
    (fake / "api").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "api" / "__init__.py").write_text("")
    (fake / "api" / "a.py").write_text("import facecrm.web.console\n")
    (fake / "api" / "b.py").write_text("from facecrm import web\n")
    (fake / "api" / "c.py").write_text("from ..web import console\n")
    (fake / "api" / "d.py").write_text("def f():\n    from facecrm.web.console import router\n")
    (fake / "api" / "e.py").write_text("from facecrm.webhooks import x\nimport facecrm.crm\n")
    monkeypatch.setattr(f"{__name__}.SRC", fake)
    found = violations({"facecrm.api": ("facecrm.web",)})
    assert [v.split(":")[0] for v in found] == [
        "facecrm/api/a.py",
        "facecrm/api/b.py",
        "facecrm/api/c.py",
        "facecrm/api/d.py",
    ]


# the modules that may read or replace the process-wide settings: where a process starts
ENTRY_POINTS = {"facecrm.config", "facecrm.cli", "facecrm.server", "facecrm.facade", "facecrm.demo"}


def global_settings_reads() -> list[str]:
    """`file:line: module` wherever a module below the entry points names `get_settings` or
    `configure` from `facecrm.config` (imported or called)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        if module in ENTRY_POINTS:
            continue
        for name, line in imports(path):
            if name in {"facecrm.config.get_settings", "facecrm.config.configure"}:
                found.append(f"{path.relative_to(SRC.parent)}:{line}: {module} uses {name}")
    return found


def test_only_entry_points_read_the_global_settings() -> None:
    assert global_settings_reads() == []


def test_the_api_prefix_is_written_once() -> None:
    """The agent, the client, the server and the CLI all take `config.API_PREFIX`."""
    from facecrm.config import API_PREFIX

    found = [
        f"{path.relative_to(SRC.parent)}"
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if API_PREFIX + "/" in node.value or node.value == API_PREFIX
    ]
    assert found == ["facecrm/config.py"]
