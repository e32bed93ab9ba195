"""Where the gallery lives for each database, kept in step with `face_templates`.

* SQLite: an in-memory `Gallery` (exact, plus HNSW when large) loaded from the
  database; additions appear after the transaction commits, removals take
  effect before it commits (fail-safe: a failed erasure never leaves a face
  searchable that the database says is gone... nor the reverse for long).
* PostgreSQL: pgvector rows in `gallery_vectors`, written in the same
  transaction as the templates and deleted with them by the foreign key; the
  search is SQL, so every server process sees the same gallery at once.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import event, text, update
from sqlalchemy.orm import Session

from facecrm import private
from facecrm.config import Settings
from facecrm.crm.models import GalleryState
from facecrm.gallery.gallery import (
    CANDIDATES_PER_FACE,
    Candidate,
    Decision,
    Gallery,
    assign,
    best_per_customer,
)
from facecrm.gallery.index import HnswIndex, Vectors
from facecrm.keys import derived_key

log = logging.getLogger("facecrm.gallery")

Row = tuple[int, str, np.ndarray]
"""A template for search: (template id, customer id, plaintext unit vector)."""


class GalleryStore(Protocol):
    """The search side of the templates table (which holds them encrypted)."""

    def added(self, session: Session, rows: list[Row]) -> None: ...
    def removed(self, session: Session, customer_id: str) -> None: ...
    def decide(self, session: Session, queries: Vectors, threshold: float) -> list[Decision]: ...
    def candidates(self, session: Session, queries: Vectors) -> list[list[Candidate]]: ...


def bump_generation(session: Session, model_id: str) -> None:
    """Mark the gallery of `model_id` changed (saved ANN graphs become stale)."""
    updated = session.execute(
        update(GalleryState)
        .where(GalleryState.model_id == model_id)
        .values(generation=GalleryState.generation + 1)
    )
    if updated.rowcount == 0:  # type: ignore[attr-defined]
        session.add(GalleryState(model_id=model_id, generation=1))


class MemoryGalleryStore:
    """The in-process gallery for SQLite (one server process per data directory)."""

    def __init__(
        self,
        load: Callable[[], tuple[list[Row], int | None]],
        model_id: str,
        settings: Settings,
    ) -> None:
        self.model_id = model_id
        self.settings = settings
        self._lock = threading.Lock()  # API requests run in a thread pool
        self.gallery = self._build(*load())

    def added(self, session: Session, rows: list[Row]) -> None:
        bump_generation(session, self.model_id)
        ids = [r[0] for r in rows]
        owners = [r[1] for r in rows]
        vectors = np.stack([r[2] for r in rows])

        @event.listens_for(session, "after_commit", once=True)
        def _publish(_session: Session) -> None:
            with self._lock:
                self.gallery.add(ids, owners, vectors)

    def removed(self, session: Session, customer_id: str) -> None:
        bump_generation(session, self.model_id)
        with self._lock:
            self.gallery.remove_customer(customer_id)

    def decide(self, session: Session, queries: Vectors, threshold: float) -> list[Decision]:
        return assign(self.candidates(session, queries), threshold)

    def candidates(self, session: Session, queries: Vectors) -> list[list[Candidate]]:
        with self._lock:
            return self.gallery.candidates(queries)

    # -- loading and the saved HNSW graph -------------------------------------------

    def _build(self, rows: list[Row], generation: int | None) -> Gallery:
        dim = len(rows[0][2]) if rows else 128
        gallery = Gallery(dim, ann_min_size=self.settings.ann_min_size)
        vectors = np.stack([r[2] for r in rows]) if rows else np.zeros((0, dim), np.float32)
        saved = self._load_saved_ann(dim, generation, {r[0] for r in rows})
        if saved is not None:
            gallery.attach_ann(saved)
        gallery.add([r[0] for r in rows], [r[1] for r in rows], vectors)
        if saved is None and gallery.ann is not None:
            self._save_ann(gallery.ann, generation or 0)
        return gallery

    def _ann_paths(self) -> tuple[Path, Path]:
        base = self.settings.cache_dir / f"hnsw-{self.model_id}"
        return base.with_suffix(".bin"), base.with_suffix(".json")

    def _cache_key(self) -> bytes:
        return derived_key(self.settings, "gallery-cache")

    def _load_saved_ann(self, dim: int, generation: int | None, ids: set[int]) -> HnswIndex | None:
        """The saved graph, if it reflects this generation (it is stored encrypted)."""
        if len(ids) < self.settings.ann_min_size:
            return None
        index_path, meta_path = self._ann_paths()
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("generation") != generation or meta.get("count") != len(ids):
                return None
            sealed = index_path.read_bytes()
            plain = AESGCM(self._cache_key()).decrypt(sealed[:12], sealed[12:], b"hnsw")
            return HnswIndex.from_bytes(plain, dim, ids)
        except Exception:  # missing, stale, corrupt or from another key: rebuild
            return None

    def _save_ann(self, index: HnswIndex, generation: int) -> None:
        index_path, meta_path = self._ann_paths()
        private.make_dir(index_path.parent, own=True)
        nonce = secrets.token_bytes(12)
        sealed = nonce + AESGCM(self._cache_key()).encrypt(nonce, index.to_bytes(), b"hnsw")
        private.write_file(index_path, sealed)
        meta = {"generation": generation, "count": len(index)}
        private.write_file(meta_path, json.dumps(meta).encode())


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in vector.tolist()) + "]"


# pgvector's `hnsw.ef_search` by the model's template count, from the agreement of its
# first customer with exact search for returning customers on the product's graph
# (m 32 / ef_construction 200; benchmarks/README.md, "A million templates"): 200 gave
# 99.4% at 100k (on two bulk-built graphs and one grown insert by insert, as a chain's
# is), 99.3% at 200k and 99.7% at 300k templates
# (1,000 queries each: a standard error of ~0.25 points, so on the target, not with a
# margin); 1,000 (pgvector's maximum) gave 99.6% at 1M. Agreement at a fixed ef_search
# falls as a graph grows, so each value holds up to the largest size it was measured at,
# and anything larger gets the maximum. A miss is an "unknown" returning customer.
EF_SEARCH_BY_SIZE = ((300_000, 200),)
EF_SEARCH_MAX = 1000
SIZE_RECHECK_SECONDS = 60.0
_now = time.monotonic  # the recount's clock (a test moves it)


def ef_search_for(templates: int) -> int:
    """pgvector's `hnsw.ef_search` for a gallery of `templates` of one model."""
    for size, ef_search in EF_SEARCH_BY_SIZE:
        if templates <= size:
            return ef_search
    return EF_SEARCH_MAX


class PgVectorGalleryStore:
    """pgvector search in PostgreSQL; nothing is held in the process.

    Each embedder gets a partial HNSW index over its own rows (`vector` columns
    have no fixed dimension, so the index is on `embedding::vector(dim)`); it is
    created the first time the process sees the model, which on an existing
    large table takes a while once.

    `ef_search` (how many candidates pgvector visits) follows the gallery's size unless
    the `pgvector_hnsw_ef_search` setting fixes it (`ef_search_for`): pgvector's search is
    PostgreSQL's CPU, not ours, and at the old fixed 1,000 it was the larger part of an
    identify's cost on PostgreSQL (benchmarks/README.md). A miss makes a returning
    customer "unknown", never someone else (the cascade and the margin judge whoever is
    returned), but it is still a miss, so each value is used only up to the size at which
    its agreement with exact search was measured. The graph is denser than pgvector's
    default (`m`, `ef_construction` from the settings, 32 and 200): 99.6% at 1M
    templates, where 16 / 64 gave 94.7%.
    """

    def __init__(
        self,
        model_id: str,
        ef_search: int | None = None,
        m: int = 32,
        ef_construction: int = 200,
    ) -> None:
        self.model_id = model_id
        self.ef_search = ef_search  # None: by the gallery's size
        self._size: tuple[float, int] | None = None  # (monotonic time, templates)
        self._counting = threading.Lock()
        self._warned = False
        # pgvector wants ef_construction >= 2 m
        self.m, self.ef_construction = m, max(ef_construction, 2 * m)
        self._indexed: set[int] = set()

    def _ensure_index(self, session: Session, dim: int) -> None:
        if dim in self._indexed:
            return
        name = "gallery_hnsw_" + re.sub(r"[^a-z0-9]+", "_", self.model_id.lower()) + f"_{dim}"
        model = self.model_id.replace("'", "''")
        session.execute(
            text(
                f"CREATE INDEX IF NOT EXISTS {name} ON gallery_vectors"
                f" USING hnsw ((embedding::vector({dim})) vector_ip_ops)"
                f" WITH (m = {int(self.m)}, ef_construction = {int(self.ef_construction)})"
                f" WHERE model_id = '{model}'"
            )
        )
        self._indexed.add(dim)

    def added(self, session: Session, rows: list[Row]) -> None:
        bump_generation(session, self.model_id)
        self._ensure_index(session, len(rows[0][2]))
        session.execute(
            text(
                "INSERT INTO gallery_vectors (template_id, customer_id, model_id, embedding)"
                " VALUES (:id, :customer, :model, CAST(:embedding AS vector))"
            ),
            [
                {"id": t, "customer": c, "model": self.model_id, "embedding": _literal(v)}
                for t, c, v in rows
            ],
        )

    def removed(self, session: Session, customer_id: str) -> None:
        bump_generation(session, self.model_id)
        session.execute(
            text("DELETE FROM gallery_vectors WHERE customer_id = :c"), {"c": customer_id}
        )

    def decide(self, session: Session, queries: Vectors, threshold: float) -> list[Decision]:
        return assign(self.candidates(session, queries), threshold)

    def _stale(self) -> bool:
        return self._size is None or _now() - self._size[0] > SIZE_RECHECK_SECONDS

    def _ef_search(self, session: Session) -> int:
        """The configured `ef_search`, or the one for this model's templates now.

        The count scans the model's index, linear in its rows, so each process re-counts at
        most every `SIZE_RECHECK_SECONDS`, one thread at a time while the others go on with
        the last count: a gallery does not outgrow a measured size in a minute. A fixed
        value below the size's is kept (the operator's choice) and logged once.
        """
        # the first count is waited for; later ones are taken by one thread only, and a
        # thread that waited for the first one does not count again
        if self._stale() and self._counting.acquire(blocking=self._size is None):
            try:
                if self._stale():
                    templates = session.execute(
                        text("SELECT count(*) FROM gallery_vectors WHERE model_id = :m"),
                        {"m": self.model_id},
                    ).scalar_one()
                    self._size = (_now(), int(templates))
            finally:
                self._counting.release()
        assert self._size is not None
        wanted = ef_search_for(self._size[1])
        if self.ef_search is None:
            return wanted
        if self.ef_search < wanted and not self._warned:
            self._warned = True
            log.warning(
                "FACECRM_PGVECTOR_HNSW_EF_SEARCH=%d is below %d, the value measured for a "
                "gallery of %d templates: returning customers may be missed (unset it to "
                "follow the gallery's size)",
                self.ef_search,
                wanted,
                self._size[1],
            )
        return int(self.ef_search)

    def candidates(self, session: Session, queries: Vectors) -> list[list[Candidate]]:
        queries = np.asarray(queries, dtype=np.float32)
        dim = queries.shape[1]
        self._ensure_index(session, dim)
        session.execute(text(f"SET LOCAL hnsw.ef_search = {self._ef_search(session)}"))
        distance = f"embedding::vector({dim}) <#> CAST(:q AS vector({dim}))"
        per_face = []
        for query in queries:
            rows = session.execute(
                text(
                    f"SELECT template_id, customer_id, -({distance}) AS sim"
                    f" FROM gallery_vectors WHERE model_id = :m ORDER BY {distance} LIMIT :k"
                ),
                {"q": _literal(query), "m": self.model_id, "k": CANDIDATES_PER_FACE * 4},
            ).all()
            per_face.append(best_per_customer((r[0], r[1], r[2]) for r in rows))
        return per_face
