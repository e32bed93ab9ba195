"""The gallery: every template of every opted-in customer, searched open-set.

`Gallery` maps template ids to customers, keeps an exact index and (for
galleries of at least `ann_min_size` templates) an HNSW index, and turns
similarities into decisions:

* a customer with several templates matches on their best one;
* a face is "unknown" unless its best customer reaches the threshold derived
  from the target false-match rate;
* in a photo with several faces one customer is given to at most one face:
  pairs are taken in descending similarity (strongest evidence first), so a
  customer claimed by a closer face is no longer available to a weaker one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from facecrm.gallery.index import ExactIndex, HnswIndex, Ids, Vectors

CANDIDATES_PER_FACE = 5


@dataclass(frozen=True, slots=True)
class Candidate:
    """A customer and the similarity of their best template to a face."""

    customer_id: str
    similarity: float
    template_id: int


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one face: `match` is None when the face is unknown."""

    match: Candidate | None
    best: Candidate | None  # the closest customer, accepted or not (never shown for unknowns)


class Gallery:
    """In-memory search structure; the database is the source of truth."""

    def __init__(self, dim: int, ann_min_size: int = 20_000) -> None:
        self.dim = dim
        self.ann_min_size = ann_min_size
        self._exact = ExactIndex(dim)
        self._ann: HnswIndex | None = None
        self._owner: dict[int, str] = {}
        self._by_customer: dict[str, set[int]] = {}

    def __len__(self) -> int:
        return len(self._owner)

    @property
    def uses_ann(self) -> bool:
        return self._ann is not None and len(self) >= self.ann_min_size

    def customers(self) -> int:
        return len(self._by_customer)

    def add(
        self, template_ids: Iterable[int], customer_ids: Iterable[str], vectors: Vectors
    ) -> None:
        ids = np.fromiter(template_ids, dtype=np.int64)
        owners = list(customer_ids)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        for template_id, customer_id in zip(ids.tolist(), owners, strict=True):
            self._owner[template_id] = customer_id
            self._by_customer.setdefault(customer_id, set()).add(template_id)
        self._exact.add(ids, vectors)
        if self._ann is not None:
            self._ann.add(ids, vectors)
        elif len(self) >= self.ann_min_size:
            self.attach_ann(self._build_ann())

    def remove_customer(self, customer_id: str) -> None:
        """Take every template of `customer_id` out of search at once."""
        ids = np.fromiter(self._by_customer.pop(customer_id, set()), dtype=np.int64)
        for template_id in ids.tolist():
            del self._owner[template_id]
        self._exact.remove(ids)
        if self._ann is not None:
            self._ann.remove(ids)

    def attach_ann(self, index: HnswIndex) -> None:
        """Use a prebuilt (e.g. loaded from disk) HNSW index for large galleries."""
        self._ann = index

    @property
    def ann(self) -> HnswIndex | None:
        return self._ann

    def _build_ann(self) -> HnswIndex:
        index = HnswIndex(self.dim, capacity=len(self) * 2)
        index.add(*self._exact.items())
        return index

    def candidates(self, queries: Vectors, exact: bool | None = None) -> list[list[Candidate]]:
        """Best customers per query, most similar first (one entry per customer)."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        use_ann = self.uses_ann if exact is None else not exact
        index = self._ann if use_ann and self._ann is not None else self._exact
        # a customer may own several of the nearest templates: over-fetch
        k = CANDIDATES_PER_FACE * 4
        template_ids, sims = index.search(queries, k)
        return [
            self._per_customer(row_ids, row_sims)
            for row_ids, row_sims in zip(template_ids, sims, strict=True)
        ]

    def _per_customer(self, ids: Ids, sims: np.ndarray) -> list[Candidate]:
        owners = [self._owner.get(t) for t in ids.tolist()]
        return best_per_customer(zip(ids.tolist(), owners, sims.tolist(), strict=True))

    def identify(self, queries: Vectors, threshold: float) -> list[Decision]:
        """Open-set decisions for the faces of one photo (see module docstring)."""
        return assign(self.candidates(queries), threshold)


def assign(per_face: list[list[Candidate]], threshold: float) -> list[Decision]:
    """Accept the strongest (face, customer) pairs at or above `threshold`, each once."""
    pairs = sorted(
        ((c.similarity, face, c) for face, cands in enumerate(per_face) for c in cands),
        key=lambda p: p[0],
        reverse=True,
    )
    match: dict[int, Candidate] = {}
    taken: set[str] = set()
    for sim, face, cand in pairs:
        if sim < threshold:
            break
        if face in match or cand.customer_id in taken:
            continue
        match[face] = cand
        taken.add(cand.customer_id)
    return [
        Decision(match=match.get(face), best=cands[0] if cands else None)
        for face, cands in enumerate(per_face)
    ]


def best_per_customer(
    rows: Iterable[tuple[int, str | None, float]], limit: int = CANDIDATES_PER_FACE
) -> list[Candidate]:
    """(template id, owner, similarity) rows, most similar first → one candidate per owner."""
    best: dict[str, Candidate] = {}
    for template_id, owner, sim in rows:
        if owner is not None and owner not in best:
            best[owner] = Candidate(owner, float(sim), int(template_id))
    return list(best.values())[:limit]
