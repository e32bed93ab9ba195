"""`facecrm eval`: run the pipeline over an identity-folder set and score it."""

from __future__ import annotations

import csv
import itertools
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecrm.config import Settings, load
from facecrm.eval.metrics import Pair, Probe, identification, verification
from facecrm.gallery.gallery import Gallery
from facecrm.vision.image import ImageError, read_image
from facecrm.vision.pipeline import FacePipeline, build_pipeline
from facecrm.vision.types import Vector

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One image of the set: its path relative to the set and its identity (folder)."""

    path: str
    identity: str


@dataclass(frozen=True, slots=True)
class Embedded:
    sample: Sample
    template: Vector | None  # the largest face's template; None when no face was found
    error: str | None = None


def scan(root: Path) -> list[Sample]:
    """Images in `root/<identity>/`, sorted by identity then file name."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    samples = [
        Sample(f"{folder.name}/{file.name}", folder.name)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for file in sorted(folder.iterdir())
        if file.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise FileNotFoundError(f"{root} has no identity folders with images")
    return samples


_worker: tuple[FacePipeline, Settings] | None = None


def _init_worker(settings: dict[str, object]) -> None:
    global _worker
    loaded = load(**settings)
    _worker = build_pipeline(loaded), loaded


def _embed_one(root: str, sample: Sample) -> Embedded:
    assert _worker is not None
    return embed_sample(*_worker, Path(root), sample)


def embed_sample(
    pipeline: FacePipeline, settings: Settings, root: Path, sample: Sample
) -> Embedded:
    """The template of the largest face in one image (or why there is none)."""
    try:
        faces = pipeline.faces(read_image(root / sample.path, settings))
    except ImageError as exc:
        return Embedded(sample, None, exc.reason)
    if not faces:
        return Embedded(sample, None, "no_face")
    return Embedded(sample, faces[0].template)


def embed_all(
    root: Path,
    samples: list[Sample],
    settings: Settings,
    workers: int,
    progress: Callable[[], None] = lambda: None,
) -> list[Embedded]:
    """Embed every sample, in `workers` processes (1: in this process)."""
    if workers <= 1:
        pipeline = build_pipeline(settings)
        out = []
        for sample in samples:
            out.append(embed_sample(pipeline, settings, root, sample))
            progress()
        return out
    overrides = settings.model_dump(mode="json")
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(overrides,)) as pool:
        futures = [pool.submit(_embed_one, str(root), s) for s in samples]
        results = []
        for future in futures:
            results.append(future.result())
            progress()
        return results


def score(a: Vector | None, b: Vector | None) -> float | None:
    """Cosine similarity of two unit templates; None when either is missing."""
    if a is None or b is None:
        return None
    return float(np.dot(a, b))


def all_pairs(embedded: list[Embedded]) -> list[tuple[Embedded, Embedded]]:
    return list(itertools.combinations(embedded, 2))


def read_pairs(path: Path, by_path: dict[str, Embedded]) -> list[tuple[Embedded, Embedded]]:
    """Pairs listed as `file_x,file_y` (a header row is allowed), relative to the set."""
    pairs = []
    with path.open(newline="") as fh:
        for n, row in enumerate(csv.reader(fh)):
            if not row or (n == 0 and row[0].strip() == "file_x"):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{n + 1}: expected file_x,file_y")
            x, y = row[0].strip(), row[1].strip()
            missing = [p for p in (x, y) if p not in by_path]
            if missing:
                raise ValueError(f"{path}:{n + 1}: {missing[0]} is not an image of the set")
            pairs.append((by_path[x], by_path[y]))
    return pairs


def write_scores(path: Path, pairs: Iterable[tuple[Embedded, Embedded]], threshold: float) -> None:
    """`file_x,file_y,score,match` for each pair (score empty without a face)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_x", "file_y", "score", "match"])
        for x, y in pairs:
            s = score(x.template, y.template)
            writer.writerow(
                [
                    x.sample.path,
                    y.sample.path,
                    "" if s is None else f"{s:.6f}",
                    int(s is not None and s >= threshold),
                ]
            )


def open_set_probes(embedded: list[Embedded]) -> list[Probe]:
    """The guide's protocol: even-position identities enrolled with their first image."""
    identities = sorted({e.sample.identity for e in embedded})
    enrolled_ids = set(identities[0::2])
    gallery: Gallery | None = None
    probes_src: list[Embedded] = []
    first: dict[str, Embedded] = {}
    for e in embedded:  # already sorted by identity then file name
        if e.sample.identity in enrolled_ids and e.sample.identity not in first:
            first[e.sample.identity] = e
        else:
            probes_src.append(e)
    enrolled = [(i, e.template) for i, e in first.items() if e.template is not None]
    if enrolled:
        dim = len(enrolled[0][1])
        gallery = Gallery(dim)
        gallery.add(
            range(len(enrolled)), [i for i, _ in enrolled], np.stack([v for _, v in enrolled])
        )
    probes = []
    for e in probes_src:
        mated = e.sample.identity in enrolled_ids
        if e.template is None or gallery is None or len(gallery) == 0:
            probes.append(Probe(mated, None, False))
            continue
        top = gallery.candidates(e.template[None, :])[0][0]
        probes.append(Probe(mated, top.similarity, top.customer_id == e.sample.identity))
    return probes


def embed_set(
    root: Path,
    settings: Settings,
    workers: int = 1,
    progress: Callable[[], None] = lambda: None,
) -> tuple[list[Embedded], float]:
    """Embed every image of `root`; returns the embeddings and seconds per image."""
    samples = scan(root)
    start = time.perf_counter()
    embedded = embed_all(root, samples, settings, workers, progress)
    return embedded, (time.perf_counter() - start) / len(embedded)


def evaluate(embedded: list[Embedded], model_id: str, threshold: float) -> dict[str, object]:
    """The report for embedded images of one set (see `metrics` for definitions)."""
    pairs = [
        Pair(score(x.template, y.template), x.sample.identity == y.sample.identity)
        for x, y in all_pairs(embedded)
    ]
    return {
        "model_id": model_id,
        "images": len(embedded),
        "identities": len({e.sample.identity for e in embedded}),
        "faces_found": sum(e.template is not None for e in embedded),
        "detection_failures": [
            {"path": e.sample.path, "reason": e.error} for e in embedded if e.error
        ],
        "verification": verification(pairs, threshold),
        "identification": identification(open_set_probes(embedded), threshold),
    }


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
