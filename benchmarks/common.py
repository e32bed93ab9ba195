"""Shared helpers for the benchmark scripts: face data, model cache, machine info, a server,
synthetic galleries."""

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
from typing import Any

import cv2
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def faces_dir() -> Path:
    """`../shared/faces` beside the repository, or `$FACECRM_FACES_DIR`."""
    path = Path(os.environ.get("FACECRM_FACES_DIR", REPO.parent / "shared" / "faces"))
    if not (path / "identities").is_dir():
        sys.exit(f"face data not found at {path}; set FACECRM_FACES_DIR")
    return path


def smoke_faces() -> Path:
    """`tests/data`: the photos every clone has, for `--smoke` runs (no ../shared needed)."""
    return REPO / "tests" / "data"


def link_model_cache(data_dir: Path, cache: Path | None) -> None:
    """Make `data_dir` reuse converted models from `cache` (created if new): the smoke runs
    share the test session's cache instead of converting dlib's ResNet again each time."""
    if cache is None or (data_dir / "cache" / "models").exists():
        return
    (data_dir / "cache").mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)  # a new cache: built on first use
    (data_dir / "cache" / "models").symlink_to(cache.resolve(), target_is_directory=True)


def clustered_templates(
    rng: np.random.Generator,
    count: int,
    per_person: int,
    center: np.ndarray,
    impostor_mean: float,
    genuine_mean: float,
) -> tuple[np.ndarray, np.ndarray]:
    """`count` synthetic unit templates of `ceil(count / per_person)` people: (vectors, person).

    Real embeddings are not uniform on the sphere: dlib's templates of different people sit
    in a narrow cone (impostor cosine ~0.83) and a person's templates close together (~0.96).
    Each template is `center + person offset + noise` (isotropic Gaussians, norms s_p and
    s_n); in high dimension the expected cosines are 1 / (1 + s_p² + s_n²) between people
    and (1 + s_p²) / (1 + s_p² + s_n²) within one, solved here for the measured means (the
    shipped calibration's). `center` is the real templates' mean direction, so real probes
    meet synthetic people at impostor similarity, as strangers do.
    """
    dim = len(center)
    total = 1 / impostor_mean
    person_sd = np.sqrt(max(genuine_mean * total - 1, 0.0) / dim)
    noise_sd = np.sqrt(max(total - genuine_mean * total, 0.0) / dim)
    people = -(-count // per_person)
    person = np.repeat(np.arange(people), per_person)[:count]
    offsets = rng.standard_normal((people, dim)).astype(np.float32) * person_sd
    vectors = center / np.linalg.norm(center) + offsets[person]
    vectors += rng.standard_normal((count, dim)).astype(np.float32) * noise_sd
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), person


def consent_evidence(session: Any) -> dict[str, object]:
    """The consent of a customer enrolled for real (the text shown, the channel, the
    witness), for synthetic customers to carry as their own."""
    from sqlalchemy import select

    from facecrm.crm.models import Consent

    shown = session.scalars(select(Consent).limit(1)).one()
    keys = ("purpose", "text_version", "text_id", "channel", "witness_id", "age_confirmed")
    return {k: getattr(shown, k) for k in keys}


def write_synthetic_customers(
    session: Any, crm: Any, templates: dict[str, list[np.ndarray]], evidence: dict[str, object]
) -> list[int]:
    """Synthetic customers written as enrollment writes them: the customer, a consent (the
    evidence of a real one), a data key each and their sealed templates (in `templates`'
    order). Returns the template ids, in the same order."""
    from sqlalchemy import insert

    from facecrm.crm.models import Consent, Customer, FaceTemplate

    ids = list(templates)
    session.execute(
        insert(Customer), [{"id": i, "name": f"Synthetic {i}", "tier": "standard"} for i in ids]
    )
    session.execute(insert(Consent), [{"customer_id": i, **evidence} for i in ids])
    sealed = crm.vault.seal_new_customers(session, templates)
    rows = [
        {
            "customer_id": i,
            "model_id": crm.model_id,
            "vector": blob,
            "quality": {},
            "source": "synthetic",
        }
        for i in ids
        for blob in sealed[i]
    ]
    returning = insert(FaceTemplate).returning(FaceTemplate.id, sort_by_parameter_order=True)
    return list(session.scalars(returning, rows).all())


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU so far of process `pid` and its live descendants (uvicorn's worker
    processes), from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    total += cpu_seconds(int(child))
    return total


def server_env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    """This process's environment for a `facecrm serve` of `data_dir` and `database_url`
    (None: the data directory's SQLite), whatever FACECRM_DATABASE_URL the caller had."""
    env = {**os.environ, "FACECRM_DATA_DIR": str(data_dir)}
    env.pop("FACECRM_DATABASE_URL", None)
    if database_url:
        env["FACECRM_DATABASE_URL"] = database_url
    return env


@contextlib.contextmanager
def serve_subprocess(
    env: dict[str, str], workers: int = 1, start_timeout: float = 1800
) -> Iterator[tuple[str, int]]:
    """`facecrm serve` in its own process with `env`, once healthy: (base URL, pid).

    With `workers` > 1 the pid is uvicorn's supervisor; its worker processes are children.
    A server not healthy within `start_timeout` seconds is an error (a start-up at a
    million templates takes minutes: waiting a fixed number of polls and going on
    anyway made the 1M run fail with "connection refused").
    """
    port = free_port()
    # the log goes to a file: a pipe nobody reads fills up (~400 requests of access log)
    # and then blocks the server in the middle of a run
    with tempfile.TemporaryFile() as log:
        command = [sys.executable, "-m", "facecrm", "serve", "--port", str(port)]
        proc = subprocess.Popen(
            command + (["--workers", str(workers)] if workers > 1 else []),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"the server exited: {log.read().decode()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode()[-2000:]
                    raise RuntimeError(f"not healthy after {start_timeout:.0f} s: {tail}")
                time.sleep(0.1)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a starved machine: do not leave it running
                proc.kill()
                proc.wait(timeout=30)


def database_url(stack: contextlib.ExitStack, backend: str) -> str | None:
    """None for SQLite (the data directory's file); for PostgreSQL the URL of the tests'
    throwaway embedded server, stopped when `stack` closes."""
    if backend != "postgresql":
        return None
    sys.path.insert(0, str(REPO / "tests"))
    from pgserver import PgServer

    return str(stack.enter_context(PgServer()).url)


def drop_hnsw(crm: Any) -> None:
    """Bulk loads go faster without pgvector's graph: it is built once, after the load
    (`build_hnsw`), instead of being updated on every insert."""
    from sqlalchemy import text

    from facecrm.crm import db

    with db.transaction(crm.sessions) as session:
        for (name,) in session.execute(
            text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'gallery_hnsw_%'")
        ):
            session.execute(text(f"DROP INDEX {name}"))


def build_hnsw(crm: Any, maintenance_work_mem: str, dim: int = 128) -> tuple[float, float]:
    """The product's HNSW index (its settings' m and ef_construction), built once after a
    load: (seconds, MB)."""
    from sqlalchemy import text

    from facecrm.crm import db
    from facecrm.crm.gallery_store import PgVectorGalleryStore

    start = time.perf_counter()
    with db.transaction(crm.sessions) as session:
        session.execute(text(f"SET LOCAL maintenance_work_mem = '{maintenance_work_mem}'"))
        s = crm.settings
        store = PgVectorGalleryStore(
            crm.model_id, m=s.pgvector_hnsw_m, ef_construction=s.pgvector_hnsw_ef_construction
        )
        store._ensure_index(session, dim)
    built = time.perf_counter() - start
    with crm.sessions() as session:
        size = session.execute(
            text(
                "SELECT sum(pg_relation_size(indexname::regclass)) FROM pg_indexes"
                " WHERE indexname LIKE 'gallery_hnsw_%'"
            )
        ).scalar_one()
    return built, float(size) / 2**20


def video_frames(path: Path, every: int = 5) -> list[np.ndarray]:
    """Every `every`-th frame of a video, RGB."""
    capture = cv2.VideoCapture(str(path))
    frames, n = [], 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if n % every == 0:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        n += 1
    return frames
