"""The pip extras: a store box with `facecrm[agent]` only runs the agent, and every other
command says which extra to add.

No second virtualenv: the CLI runs in a subprocess where an import hook makes the server's,
PostgreSQL's and the plots' modules unimportable, as they are on such a box.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from facecrm.extras import EXTRA_OF

REPO = Path(__file__).resolve().parents[1]
NOT_ON_A_STORE_BOX = sorted(top for top, extra in EXTRA_OF.items() if extra != "agent")

# runs `python -m facecrm ARGS` (or imports the modules named by FACECRM_TEST_IMPORT)
# with the modules of every extra except `agent` unimportable
AGENT_ONLY = """
import importlib.abc, os, runpy, sys

BLOCKED = set(sys.argv[1].split(","))

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
for module in filter(None, os.environ.get("FACECRM_TEST_IMPORT", "").split(",")):
    __import__(module)
sys.argv = ["facecrm", *sys.argv[2:]]
runpy.run_module("facecrm", run_name="__main__", alter_sys=True)
"""


def agent_only(
    tmp_path: Path,
    *args: str,
    imports: str = "",
    blocked: list[str] = NOT_ON_A_STORE_BOX,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`facecrm ARGS` where the modules `blocked` are not installed."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "FACECRM_DATA_DIR": str(tmp_path / "data"),
        "FACECRM_TEST_IMPORT": imports,
        "COLUMNS": "200",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-c", AGENT_ONLY, ",".join(blocked), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def test_the_agent_runs_without_the_server(tmp_path: Path) -> None:
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic", "jinja2"} <= set(NOT_ON_A_STORE_BOX)
    assert {"psycopg", "pgvector", "matplotlib"} <= set(NOT_ON_A_STORE_BOX)
    done = agent_only(
        tmp_path,
        "agent",
        "--help",
        imports="facecrm.agent.runner,facecrm.vision.pipeline,facecrm.client",
    )
    assert done.returncode == 0, done.stderr
    assert "--camera" in done.stdout and "--metrics-port" in done.stdout


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("customers", "list"), "server"),
        (("serve",), "server"),
        (("stores", "add", "PAR1", "Paris"), "server"),
    ],
)
def test_a_server_command_names_the_extra_to_install(
    tmp_path: Path, args: tuple[str, ...], extra: str
) -> None:
    done = agent_only(tmp_path, *args)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert lines[0].startswith(f"error: this needs the {extra} extra")
    assert f"pip install 'facecrm[{extra}]'" in lines[0]
    assert lines[0].endswith("(missing_extra)")


def test_postgresql_without_its_extra_names_it(tmp_path: Path) -> None:
    """A server install without `facecrm[postgres]` pointed at PostgreSQL."""
    url = "postgresql+psycopg://facecrm@127.0.0.1:9/facecrm"
    done = agent_only(
        tmp_path,
        "customers",
        "list",
        blocked=["psycopg", "pgvector"],
        env={"FACECRM_DATABASE_URL": url},
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: this needs the postgres extra (psycopg is not installed):"
        " pip install 'facecrm[postgres]' (missing_extra)"
    ]


def test_the_extras_match_pyproject() -> None:
    """`EXTRA_OF` names, for each module, the extra whose requirements install it; the core
    installs none of them; `all` has every extra and `dev` has `all`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        return {Requirement(r).name.lower() for r in requirements}

    distributions = packages_distributions()
    core = names(project["dependencies"])
    for module, extra in EXTRA_OF.items():
        (dist,) = {d.lower() for d in distributions[module]}
        assert dist in names(extras[extra]), f"{module} ({dist}) is not in facecrm[{extra}]"
        assert dist not in core, f"{module} ({dist}) is a core dependency"
    parts = {"agent", "server", "postgres", "eval", "attributes"}
    assert names(extras["all"]) == {"facecrm"} and parts <= set(extras)
    assert Requirement(extras["all"][0]).extras == parts
    assert "all" in Requirement(next(r for r in extras["dev"] if r.startswith("facecrm"))).extras
