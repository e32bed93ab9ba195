"""docs/deploy.md is run, not just read (issue 12 item 6).

Every ```bash block marked `run:<name>` is executed in the order of the guide, each in its
own `bash -euo pipefail`, against a PostgreSQL 18 + pgvector server of this module's own
(the guide creates a role and databases by fixed names). Shell state (exports) carries
from block to block through a state file per host: the store box (`agent-env`, `agent`)
is another host than the server's, and gets only what an installer hands it (the device
key, the store id). Lines ending in `# site` are the site's values (host names, paths,
ports): only those are replaced, by the test's. Blocks marked `background` are started and
left running (`serve`, `agent`) until the test stops them, as a supervisor would.

Between blocks the test plays what the guide leaves to the chain's daily life: customers
enroll (one of them is the face in the agent's video), one is erased after the backup;
and it checks the results: two worker processes answer, the agent synced and reported a
visit, the restore brought the erased customer back and `erasures replay` removed them
again, the search table was rebuilt from the encrypted templates, an old schema migrates,
the rotated master key still opens every template. The reverse proxy and TLS blocks are
`doc-only`: they are checked to be the only ones not run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text

from facecrm.crm import db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.service import FaceCRM, Photo
from facecrm.vision.pipeline import FacePipeline

from pgserver import PgServer, bin_dir
from server import free_port

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "deploy.md"
DATA = REPO / "tests" / "data"
FENCE = re.compile(r"^```(\S+)([^\n]*)\n(.*?)^```$", re.S | re.M)
SITE = re.compile(r"^export (\w+)=\S+\s+# site$", re.M)

# the guide's runnable blocks, in order (a block removed or added must be looked at here)
RUN = [
    "database",
    "secrets",
    "server-env",
    "bootstrap",
    "serve",
    "agent-env",
    "agent",
    "backup",
    "restore",
    "restore-check",
    "upgrade",
    "rotate",
]
STORE_BOX = {"agent-env", "agent"}  # another host: gets only the installer's hand-over
DOC_ONLY_SECTION = "## 4. Reverse proxy and TLS"


@dataclass(frozen=True)
class Block:
    lang: str
    name: str  # run:<name>, or "" for doc-only
    background: bool
    body: str
    section: str


def blocks() -> list[Block]:
    text_ = GUIDE.read_text()
    found = []
    for match in FENCE.finditer(text_):
        lang, info, body = match[1], match[2].split(), match[3]
        section = [line for line in text_[: match.start()].splitlines() if line.startswith("## ")]
        name = next((i.removeprefix("run:") for i in info if i.startswith("run:")), "")
        if not name and "doc-only" not in info and lang != "text":
            if lang == "":  # the architecture sketch: a plain fence
                continue
            raise AssertionError(f"a ```{lang} block is neither run:<name> nor doc-only")
        found.append(Block(lang, name, "background" in info, body, section[-1] if section else ""))
    return found


def test_migrate_rebuilds_the_search_rows_a_restored_dump_lacks(crm: FaceCRM, load) -> None:  # type: ignore[no-untyped-def]
    """The guide dumps without `gallery_vectors` (plaintext templates); before `migrate`
    rebuilt them from the encrypted templates, a restored chain recognised nobody."""
    rose = crm.enroll(
        "Rose", [Photo("1.jpg", load("identities/rose_leslie/1.jpg"))], CURRENT, "cli", SYSTEM
    )
    postgres = crm.engine.dialect.name == "postgresql"
    if postgres:  # what `pg_restore` of the guide's dump gives
        with db.transaction(crm.sessions) as session:
            session.execute(text("DELETE FROM gallery_vectors"))
        (face,) = crm.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
        assert face.match is None
    migrated = FaceCRM(crm.settings, crm.pipeline, migrate=True)
    try:
        assert migrated.search_rows_restored == (1 if postgres else 0)
        (face,) = migrated.identify(load("identities/rose_leslie/2.jpg"), SYSTEM)
        assert face.match is not None and face.match.customer_id == rose.id
        again = FaceCRM(crm.settings, crm.pipeline, migrate=True)
        assert again.search_rows_restored == 0  # nothing missing: nothing written
        again.close()
    finally:
        migrated.close()


def test_every_block_is_marked_and_only_proxy_and_tls_are_not_run() -> None:
    every = blocks()
    assert [b.name for b in every if b.name] == RUN
    assert all(b.lang == "bash" for b in every if b.name)
    documented = [b for b in every if not b.name and b.lang != "text"]
    assert {b.lang for b in documented} == {"nginx", "caddyfile"}
    assert all(b.section.startswith(DOC_ONLY_SECTION) for b in documented)


# -- running the guide -------------------------------------------------------------------


class Guide:
    """Runs the guide's blocks with shell state kept per host, in `work`."""

    def __init__(self, work: Path, site: dict[str, str], env: dict[str, str]) -> None:
        self.work = work
        self.site = site
        self.env = env
        self.blocks = {b.name: b for b in blocks() if b.name}
        self.procs: list[subprocess.Popen[bytes]] = []

    def state(self, host: str) -> Path:
        return self.work / f"state-{host}.sh"

    def script(self, name: str, overrides: dict[str, str] | None = None) -> str:
        def site(match: re.Match[str]) -> str:
            var = match[1]
            value = self.site.get(f"{name}:{var}", self.site.get(var))
            assert value is not None, f"no test value for the site variable {var} ({name})"
            return f"export {var}={shlex.quote(value)}"

        body = SITE.sub(site, self.blocks[name].body)
        unreplaced = [line for line in body.splitlines() if line.rstrip().endswith("# site")]
        assert unreplaced == [], unreplaced  # a site line not in `export NAME=value` form
        host = "store" if name in STORE_BOX else "server"
        state = self.state(host)
        extra = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (overrides or {}).items())
        prelude = f"set -euo pipefail\nsource {shlex.quote(str(state))}\n{extra}cd {self.work}\n"
        return prelude + body

    def run(self, name: str, overrides: dict[str, str] | None = None, save: bool = True) -> str:
        """Run block `name`; its exports carry to the next block of the same host."""
        host = "store" if name in STORE_BOX else "server"
        save_state = f"\nexport -p > {shlex.quote(str(self.state(host)))}\n" if save else "\n"
        done = subprocess.run(
            ["bash", "-c", self.script(name, overrides) + save_state],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"block {name} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def start(self, name: str, log: Path) -> subprocess.Popen[bytes]:
        """A `background` block: its one command replaces the shell (a supervisor's view)."""
        head, last = self.script(name).rstrip("\n").rsplit("\n", 1)
        command = f"{head}\nexec {last}"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers too are stopped with its group
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def value(self, host: str, var: str) -> str:
        out = subprocess.run(
            ["bash", "-c", f'source {shlex.quote(str(self.state(host)))}; printf %s "${var}"'],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    def facecrm(self, *args: str, host: str = "server") -> str:
        """A facecrm command in the host's current shell state (what an operator types)."""
        line = "facecrm " + " ".join(shlex.quote(a) for a in args)
        done = subprocess.run(
            ["bash", "-c", f"set -e; source {shlex.quote(str(self.state(host)))}; {line}"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{line}:\n{done.stdout}\n{done.stderr}"
        return done.stdout


def wait_for(check, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def scalar(url: str, sql: str) -> object:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql)).scalar()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """A server of this module's own: the guide creates `facecrm` and `facecrm_restored`."""
    with PgServer(dbname="postgres", extensions=()) as server:
        yield server


def data_dir(path: Path, model_cache: Path) -> Path:
    """A host's data directory that reuses the session's converted models."""
    (path / "cache").mkdir(parents=True)
    (path / "cache" / "models").symlink_to(model_cache, target_is_directory=True)
    return path


@pytest.mark.slow  # the agent plays its video in real time: ~3 minutes
def test_the_deploy_guide_runs(
    pg: PgServer, tmp_path: Path, model_cache: Path, pipeline: FacePipeline
) -> None:
    """`pipeline` converts the models into the session's cache first."""
    work = tmp_path / "ops"
    work.mkdir()
    port = free_port()
    base = f"127.0.0.1:{pg.port}"
    server_dir = data_dir(tmp_path / "server-data", model_cache)
    agent_dir = data_dir(tmp_path / "agent-data", model_cache)
    lin = sorted((DATA / "identities" / "lin_manuel_miranda").iterdir())
    kit = sorted((DATA / "identities" / "kit_harington").iterdir())
    site = {
        "PGADMIN_URL": f"postgresql://postgres@{base}/postgres",
        "DB_PASSWORD": "change-me",
        "FACECRM_DATABASE_URL": f"postgresql+psycopg://facecrm:change-me@{base}/facecrm",
        "FACECRM_DATA_DIR": str(server_dir),
        "agent-env:FACECRM_DATA_DIR": str(agent_dir),
        "PORT": str(port),
        "PROXY_IP": "127.0.0.1",
        "FACECRM_SERVER": f"http://127.0.0.1:{port}",  # the proxy and TLS are documented only
        "CAMERA": str(DATA / "video" / "short_hamilton_clip.mp4"),
        "CHECK_PHOTO": str(lin[-1]),
    }
    keep = {"HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "PGSERVER_RUN_AS"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), str(bin_dir()), "/usr/bin", "/bin"]
    )
    env["PYTHONPATH"] = str(REPO / "src")
    guide = Guide(work, site, env)
    for host in ("server", "store"):
        guide.state(host).write_text("")
    database = site["FACECRM_DATABASE_URL"]
    try:
        guide.run("database")
        guide.run("secrets")
        assert (work / "master-key.txt").stat().st_mode & 0o077 == 0  # umask 077
        out = guide.run("server-env")
        assert "Schema none →" in out, out
        guide.run("bootstrap")
        store_id, agent_key = (
            guide.value("server", "STORE_ID"),
            guide.value("server", "FACECRM_AGENT_KEY"),
        )
        assert store_id and agent_key

        serve = guide.start("serve", tmp_path / "serve.log")
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
            120,
            "the server",
        )
        workers = [
            p for p in psutil.Process(serve.pid).children(recursive=True) if "python" in p.name()
        ]
        assert len(workers) >= 2, (tmp_path / "serve.log").read_text()  # --workers 2

        # the chain's life: two customers enroll, one of them is the face in the agent's video
        guide.facecrm("enroll", "--consent", "Lin-Manuel Miranda", str(lin[0]))
        guide.facecrm("enroll", "--consent", "Kit Harington", str(kit[0]))
        ids = dict(
            (name, cid)
            for cid, name in (
                (scalar(database, f"SELECT id FROM customers WHERE name = '{n}'"), n)
                for n in ("Lin-Manuel Miranda", "Kit Harington")
            )
        )
        assert all(ids.values())

        # the store box gets what the installer hands over, nothing else
        store_state = guide.state("store")
        store_state.write_text(
            f"export STORE_ID={shlex.quote(store_id)}\n"
            f"export FACECRM_AGENT_KEY={shlex.quote(agent_key)}\n"
        )
        guide.run("agent-env")
        agent = guide.start("agent", tmp_path / "agent.log")
        wait_for(
            lambda: scalar(
                database, "SELECT count(*) FROM audit_events WHERE action = 'gallery_sync'"
            ),
            180,
            "the agent's gallery sync",
        )
        wait_for(
            lambda: scalar(
                database,
                f"SELECT count(*) FROM visits WHERE customer_id = '{ids['Lin-Manuel Miranda']}'",
            ),
            300,
            "a visit reported by the agent",
        )
        guide.stop(agent)

        out = guide.run("backup")
        assert (work / "facecrm.dump").stat().st_size > 0
        # after the backup: Kit Harington asks to be erased
        guide.facecrm("customers", "delete", "--yes", str(ids["Kit Harington"]))
        guide.stop(serve)  # restores happen with the servers stopped

        out = guide.run("restore")
        restored = database.rsplit("/", 1)[0] + "/facecrm_restored"
        assert "Rebuilt 2 search row(s)" in out, out  # the dump has none; then Kit is erased
        assert (
            scalar(restored, f"SELECT count(*) FROM customers WHERE id = '{ids['Kit Harington']}'")
            == 0
        )
        assert (
            scalar(
                restored, f"SELECT count(*) FROM customers WHERE id = '{ids['Lin-Manuel Miranda']}'"
            )
            == 1
        )
        assert scalar(restored, "SELECT count(*) FROM gallery_vectors") == 1
        out = guide.run("restore-check")
        assert "Lin-Manuel Miranda" in out, out

        out = guide.run("upgrade")
        assert "up to date" in out, out
        # and a database one release behind, as an upgrade meets it
        old = pg.url_for("facecrm_old")
        scalar(pg.url_for("postgres"), "SELECT 1")
        engine = create_engine(pg.url_for("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text("CREATE DATABASE facecrm_old OWNER facecrm"))
        engine.dispose()
        engine = create_engine(old, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        engine.dispose()
        engine = db.make_engine(old)
        db.migrate(engine, "0012")
        engine.dispose()
        out = guide.run("upgrade", {"FACECRM_DATABASE_URL": old}, save=False)
        assert f"Schema 0012 → {db.head_revision()}" in out, out

        out = guide.run("rotate")
        assert "Master key mk-2 now wraps all data keys" in out, out
        assert "Lin-Manuel Miranda" in guide.facecrm("identify", str(lin[-1]))
    finally:
        for proc in guide.procs:
            guide.stop(proc)
