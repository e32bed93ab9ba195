"""Agent gallery sync: cold sync of N templates, and bytes and server CPU per change.

    python benchmarks/sync_bench.py [--size 100000] [--backends sqlite postgresql]
    python benchmarks/sync_bench.py --smoke     # 300 templates, seconds

`facecrm serve` runs in its own process (its CPU is read from /proc). The gallery holds
`size` synthetic customers with one template of each cascade model (dlib and SFace, as
enrollment stores them), sealed under a data key per customer like every template. An
agent's `LocalGallery` then:

1. syncs from nothing twice: first with the server's decrypted-template cache cold (one
   data-key unwrap per customer), then warm (what every further new agent costs);
2. follows `--changes` single changes, each one poll: half enrollments (a customer with
   both models' templates), half erasures; bytes are the response bodies;
3. polls with nothing new (what 1,000 agents cost the server between changes).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import distinct, func, insert, select

from facecrm.agent.runner import LocalGallery
from facecrm.config import configure
from facecrm.crm import accounts, db, sync
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.gallery_store import bump_generation
from facecrm.crm.models import Consent, Customer, FaceTemplate
from facecrm.crm.service import FaceCRM, Photo
from facecrm.gallery.threshold import load_calibration
from facecrm.vision.image import read_image

from common import (
    clustered_templates,
    consent_evidence,
    cpu_seconds,
    database_url,
    link_model_cache,
    machine,
    serve_subprocess,
    server_env,
    smoke_faces,
)


def add_customers(
    crm: FaceCRM, ids: list[str], vectors: dict[str, np.ndarray], log: bool = False
) -> None:
    """Customers with one template of each model (the vector for both: bytes and time are
    what is measured here, not decisions), sealed like enrollment seals them."""
    models = crm.sync.models()
    with crm.sessions() as session:
        evidence = consent_evidence(session)
    with db.transaction(crm.sessions) as session:
        session.execute(insert(Customer), [{"id": i, "name": i, "tier": "standard"} for i in ids])
        session.execute(insert(Consent), [{"customer_id": i, **evidence} for i in ids])
        sealed = crm.vault.seal_new_customers(session, {i: [vectors[i]] for i in ids})
        rows = [
            {
                "customer_id": i,
                "model_id": m,
                "vector": sealed[i][0] if m == crm.model_id else _seal(crm, session, i, vectors, m),
                "quality": {},
                "source": "synthetic",
            }
            for i in ids
            for m in models
        ]
        template_ids = session.scalars(
            insert(FaceTemplate).returning(FaceTemplate.id, sort_by_parameter_order=True), rows
        ).all()
        firsts = [
            (t, r["customer_id"], vectors[str(r["customer_id"])])
            for t, r in zip(template_ids, rows, strict=True)
            if r["model_id"] == crm.model_id
        ]
        if crm.engine.dialect.name == "postgresql":
            crm.gallery.added(session, firsts)  # type: ignore[arg-type]
        else:
            bump_generation(session, crm.model_id)
        if log:  # an enrollment as the agents see it
            for i in ids:
                mine = [t for t, r in zip(template_ids, rows, strict=True) if r["customer_id"] == i]
                sync.record_added(session, i, mine)


def _seal(crm: FaceCRM, session, customer_id: str, vectors, model_id: str) -> bytes:  # type: ignore[no-untyped-def]
    (blob,) = crm.vault.seal_templates(session, customer_id, [vectors[customer_id]], model_id)
    return blob


def fill(crm: FaceCRM, size: int, faces: Path) -> tuple[str, np.ndarray]:
    """A store agent's key, and `size` synthetic customers (one template per model each)."""
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "BENCH", "Bench store", SYSTEM)
        _, key = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
    photo = sorted((faces / "identities" / "lin_manuel_miranda").iterdir())[0]
    crm.enroll("Lin", [Photo("still", read_image(photo, crm.settings))], CURRENT, "cli", SYSTEM)
    with crm.sessions() as session:
        center = crm.plain_templates(session)[0][2]
    calibration = load_calibration(crm.model_id)
    vectors, _ = clustered_templates(
        np.random.default_rng(0),
        size + 1000,
        1,
        center,
        calibration.impostor_mean,
        calibration.genuine_mean or 0.96,
    )
    for start in range(0, size, 2000):
        ids = [f"syn{k:08d}" for k in range(start, min(start + 2000, size))]
        add_customers(crm, ids, {i: vectors[int(i[3:])] for i in ids})
    return key, vectors[size:]


def measure(url: str, pid: int, key: str) -> tuple[LocalGallery, httpx.Client, list[int]]:
    sizes: list[int] = []

    def count(response: httpx.Response) -> None:
        response.read()
        sizes.append(len(response.content))

    client = httpx.Client(
        base_url=url, headers={"X-API-Key": key}, timeout=120, event_hooks={"response": [count]}
    )
    return LocalGallery(), client, sizes


def row(
    backend: str, size: int, what: str, wall: float, nbytes: float, cpu: float, agent: float
) -> None:
    figures = f"{wall * 1000:,.0f} | {nbytes:,.0f} | {cpu * 1000:,.0f} | {agent * 1000:,.0f}"
    print(f"| {backend} | {size:,} | {what} | {figures} |", flush=True)


def reuse(crm: FaceCRM, size: int) -> tuple[str, np.ndarray]:
    """A new agent key on a gallery `fill` made before (`--data-dir`, SQLite)."""
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "BENCH2", "Bench store", SYSTEM)
        _, key = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
    spare = np.random.default_rng(1).standard_normal((1000, 128)).astype(np.float32)
    return key, spare / np.linalg.norm(spare, axis=1, keepdims=True)


def run(
    backend: str,
    size: int,
    changes: int,
    faces: Path,
    cache: Path | None,
    keep: Path | None = None,
) -> None:
    data_dir = keep or Path(tempfile.mkdtemp(prefix="facecrm-sync-bench-"))
    filled = keep is not None and (keep / "facecrm.db").exists()
    if not filled:
        link_model_cache(data_dir, cache)
    with contextlib.ExitStack() as stack:
        url_db = database_url(stack, backend)
        settings = configure(data_dir=data_dir, database_url=url_db)
        crm = FaceCRM(settings, migrate=True)
        started = time.perf_counter()
        if filled:  # the previous run's `--size` customers, and its changes
            key, spare = reuse(crm, size)
            with crm.sessions() as session:
                count = select(func.count(distinct(FaceTemplate.customer_id)))
                size = int(session.scalar(count) or 0) - 1
        else:
            key, spare = fill(crm, size, faces)
            print(f"{backend}: filled {size:,} customers in {time.perf_counter() - started:.0f} s")
        with serve_subprocess(server_env(data_dir, url_db)) as (url, pid):
            for label in ("cold sync, cache cold", "cold sync, cache warm"):
                gallery, client, sizes = measure(url, pid, key)
                cpu, wall, mine = cpu_seconds(pid), time.perf_counter(), time.process_time()
                gallery.sync(client)
                wall, cpu = time.perf_counter() - wall, cpu_seconds(pid) - cpu
                mine = time.process_time() - mine
                templates, _ = gallery.size()
                if templates != size + 1:
                    raise SystemExit(f"FAILED: the agent holds {templates} of {size + 1}")
                what = f"{label} ({len(sizes)} pages)"
                row(backend, size, what, wall, sum(sizes), cpu, mine)
            totals = {"enroll": [0.0] * 4, "erase": [0.0] * 4}
            tag = f"{time.time_ns() // 1000 % 10**9:09d}"
            with crm.sessions() as session:  # the highest synthetic id still enrolled
                last = session.scalar(select(func.max(Customer.id)).where(Customer.id.like("syn%")))
            top = int(last[3:])  # erased from the top down
            for k in range(changes):
                kind = "enroll" if k % 2 == 0 else "erase"
                if kind == "enroll":
                    new = f"new{tag}{k:04d}"
                    add_customers(crm, [new], {new: spare[k]}, log=True)
                else:  # a synthetic customer no earlier run (`--data-dir`) erased
                    crm.delete_customer(f"syn{top - k // 2:08d}", SYSTEM)
                sizes.clear()
                cpu, wall, mine = cpu_seconds(pid), time.perf_counter(), time.process_time()
                if not gallery.sync(client):
                    raise SystemExit(f"FAILED: change {k} ({kind}) did not reach the agent")
                t = totals[kind]
                t[0] += time.perf_counter() - wall
                t[1] += sum(sizes)
                t[2] += cpu_seconds(pid) - cpu
                t[3] += time.process_time() - mine
            n = max(changes // 2, 1)
            for kind, (wall, nbytes, cpu, mine) in totals.items():
                row(
                    backend,
                    size,
                    f"per change: {kind} (mean of {n})",
                    wall / n,
                    nbytes / n,
                    cpu / n,
                    mine / n,
                )
            polls = 50
            sizes.clear()
            cpu, wall, mine = cpu_seconds(pid), time.perf_counter(), time.process_time()
            for _ in range(polls):
                gallery.sync(client)
            wall, cpu = time.perf_counter() - wall, cpu_seconds(pid) - cpu
            mine = time.process_time() - mine
            row(
                backend,
                size,
                f"poll, nothing new (mean of {polls})",
                wall / polls,
                sum(sizes) / polls,
                cpu / polls,
                mine / polls,
            )
            client.close()
        crm.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=100_000, help="synthetic customers")
    parser.add_argument("--changes", type=int, default=20, help="single changes followed")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--smoke", action="store_true", help="tests/data, 300 customers, seconds")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    parser.add_argument("--data-dir", type=Path, help="SQLite: keep the gallery here, reuse it")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    if args.smoke:
        args.size, args.changes = 300, 4
    print(f"machine: {machine()}")
    print(
        f"{args.size:,} synthetic customers + 1 real, one template per cascade model each;"
        " bytes are response bodies (JSON, float16 vectors in base64)\n"
    )
    print("| backend | customers | what | wall ms | bytes | server CPU ms | agent CPU ms |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for backend in args.backends:
        run(backend, args.size, args.changes, smoke_faces(), args.model_cache, args.data_dir)


if __name__ == "__main__":
    main()
