"""Exact vs approximate 1:N search at gallery sizes up to 100k templates.

    python benchmarks/search_bench.py [--sizes 1000 100000] [--queries 2000]
    python benchmarks/search_bench.py --smoke    # 2,000 templates, 50 queries, seconds

Galleries are synthetic unit vectors (128-d, like dlib's templates); queries
are noisy copies of gallery templates (mated: a returning customer) and fresh
random vectors (non-mated: a stranger). For each index we report the build
time, the query latency (one query at a time, one thread) and how often its
rank-1 template equals the exact search's. usearch and faiss are not dependencies of
facecrm: their rows are left out (and said so) when they are not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from facecrm.gallery.index import ExactIndex, HnswIndex

from common import machine

DIM = 128
# index: (module, PyPI package) of the optional comparison libraries
KINDS = {
    "exact (numpy)": None,
    "hnswlib": None,
    "usearch": ("usearch", "usearch"),
    "faiss-hnsw": ("faiss", "faiss-cpu"),
}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class UsearchIndex:
    def __init__(self) -> None:
        from usearch.index import Index

        self._index = Index(
            ndim=DIM,
            metric="ip",
            dtype="f32",
            connectivity=16,
            expansion_add=200,
            expansion_search=256,
        )

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add(ids, vectors, threads=1)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        result = self._index.search(queries, k, threads=1)
        return result.keys.reshape(len(queries), k), 1 - result.distances.reshape(len(queries), k)


class FaissHnswIndex:
    def __init__(self) -> None:
        import faiss

        faiss.omp_set_num_threads(1)
        self._hnsw = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
        self._hnsw.hnsw.efConstruction = 200
        self._hnsw.hnsw.efSearch = 256
        self._index = faiss.IndexIDMap(self._hnsw)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = self._index.search(queries, k)
        return ids, sims


def build(kind: str, ids: np.ndarray, vectors: np.ndarray):  # type: ignore[no-untyped-def]
    index = {
        "exact (numpy)": lambda: ExactIndex(DIM),
        "hnswlib": lambda: HnswIndex(DIM, capacity=len(ids)),
        "usearch": UsearchIndex,
        "faiss-hnsw": FaissHnswIndex,
    }[kind]()
    index.add(ids, vectors)
    return index


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--smoke", action="store_true", help="one small gallery, seconds")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.queries = [2_000], 50
    kinds = [k for k, opt in KINDS.items() if not opt or importlib.util.find_spec(opt[0])]
    rng = np.random.default_rng(0)
    print(f"machine: {machine()}")
    print(
        "| templates | index | build s | query ms (p50) "
        "| rank-1 = exact (mated) | rank-1 = exact (strangers) |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for size in args.sizes:
        vectors = unit(rng, size)
        ids = np.arange(size, dtype=np.int64)
        picks = rng.choice(size, args.queries)
        noisy = vectors[picks] + 0.06 * rng.standard_normal((args.queries, DIM)).astype(np.float32)
        mated = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
        strangers = unit(rng, args.queries)
        reference: dict[str, np.ndarray] = {}
        for kind in kinds:
            start = time.perf_counter()
            index = build(kind, ids, vectors)
            built = time.perf_counter() - start
            latencies, tops = [], {}
            for name, queries in (("mated", mated), ("strangers", strangers)):
                top = np.empty(len(queries), dtype=np.int64)
                for n, q in enumerate(queries):
                    t = time.perf_counter()
                    found, _ = index.search(q[None, :], 5)
                    latencies.append(time.perf_counter() - t)
                    top[n] = found[0, 0]
                tops[name] = top
            if kind.startswith("exact"):
                reference = tops
            agree = {n: float(np.mean(tops[n] == reference[n])) for n in tops}
            print(
                f"| {size:,} | {kind} | {built:.2f} | {np.median(latencies) * 1000:.3f} | "
                f"{agree['mated']:.4f} | {agree['strangers']:.4f} |",
                flush=True,
            )
    for kind, opt in KINDS.items():
        if kind not in kinds and opt:
            print(f"\n{kind}: left out, not installed (`pip install {opt[1]}`)")


if __name__ == "__main__":
    main()
