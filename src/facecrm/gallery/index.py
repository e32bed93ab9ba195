"""Vector indexes over face templates: exact for small galleries, HNSW for large.

Both keep integer template ids and unit-length vectors and answer top-k by
cosine similarity. Which one a gallery uses is decided by `Gallery` from the
size (see `benchmarks/search_bench.py` for the measurements behind the choice
of hnswlib).
"""

from __future__ import annotations

import contextlib
import pickle
from typing import Protocol

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]


class VectorIndex(Protocol):
    """Top-k cosine search over (id, unit vector) pairs."""

    def add(self, ids: Ids, vectors: Vectors) -> None: ...
    def remove(self, ids: Ids) -> None: ...
    def search(self, queries: Vectors, k: int) -> tuple[Ids, npt.NDArray[np.float32]]: ...
    def __len__(self) -> int: ...


class ExactIndex:
    """Brute-force matrix product: exact, fast up to tens of thousands of templates."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def items(self) -> tuple[Ids, Vectors]:
        """All ids and vectors (views; do not modify)."""
        return self._ids, self._vectors

    def add(self, ids: Ids, vectors: Vectors) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self.remove(ids)
        start = len(self._ids)
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, np.asarray(vectors, dtype=np.float32)])
        self._row.update({int(i): start + n for n, i in enumerate(ids)})

    def remove(self, ids: Ids) -> None:
        rows = [self._row.pop(int(i)) for i in ids if int(i) in self._row]
        if not rows:
            return
        keep = np.ones(len(self._ids), dtype=bool)
        keep[rows] = False
        self._ids, self._vectors = self._ids[keep], self._vectors[keep]
        self._row = {int(i): n for n, i in enumerate(self._ids)}

    def search(self, queries: Vectors, k: int) -> tuple[Ids, npt.NDArray[np.float32]]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, len(self._ids))
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.int64), empty.astype(np.float32)
        sims = queries @ self._vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1)
        top = np.take_along_axis(top, order, axis=1)
        return self._ids[top], np.take_along_axis(top_sims, order, axis=1)


class HnswIndex:
    """hnswlib HNSW graph (inner product on unit vectors = cosine).

    `ef_search` 512: on 100k synthetic templates calibrated on real dlib distributions
    (benchmarks/million_bench.py), ef 256 found the exact best customer for only 98.7% of
    mated queries, 512 for 99.4%, 1,000 for 100%; a search stays around a millisecond.
    """

    def __init__(self, dim: int, capacity: int = 1024, ef_search: int = 512) -> None:
        import hnswlib

        self.dim = dim
        self.ef_search = ef_search
        self._index = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=max(capacity, 16), ef_construction=200, M=16)
        self._index.set_ef(ef_search)
        self._live: set[int] = set()

    def __len__(self) -> int:
        return len(self._live)

    def add(self, ids: Ids, vectors: Vectors) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        needed = self._index.get_current_count() + len(ids)
        if needed > self._index.get_max_elements():
            self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
        for i in ids:
            if int(i) not in self._live:
                with contextlib.suppress(RuntimeError):  # a label removed earlier comes back
                    self._index.unmark_deleted(int(i))
        self._index.add_items(np.asarray(vectors, dtype=np.float32), ids, replace_deleted=False)
        self._live.update(int(i) for i in ids)

    def remove(self, ids: Ids) -> None:
        for i in ids:
            if int(i) in self._live:
                self._index.mark_deleted(int(i))
                self._live.discard(int(i))

    def search(self, queries: Vectors, k: int) -> tuple[Ids, npt.NDArray[np.float32]]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, len(self._live))
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.int64), empty.astype(np.float32)
        self._index.set_ef(max(self.ef_search, k))
        labels, distances = self._index.knn_query(queries, k=k)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def to_bytes(self) -> bytes:
        """The graph (with its vectors) serialised; the caller encrypts it before storing."""
        return pickle.dumps(self._index)

    @classmethod
    def from_bytes(cls, data: bytes, dim: int, live: set[int], ef_search: int = 512) -> HnswIndex:
        index = cls.__new__(cls)
        index.dim = dim
        index.ef_search = ef_search
        index._index = pickle.loads(data)
        index._index.set_ef(ef_search)
        index._live = set(live)
        return index
