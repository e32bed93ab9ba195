"""How much the cascade's decision score g moves when only the preprocessing changes.

    python benchmarks/preprocessing_noise.py          # identities + more/identities + distractors
    python benchmarks/preprocessing_noise.py --smoke  # tests/data, seconds (a test runs it)

Every photo of the calibration set is embedded by both models (dlib, SFace) through the
product's pipeline, once as shipped and once per variant that changes nothing but the
pixels the pipeline reads: the detector's downscale (one `INTER_AREA` as before issue 12
item 4; bilinear only), the JPEG decoder's scale (`decode_max_side` 640) and a JPEG
re-encode at quality 90 (what another phone or upload path does). For every pair, g is
the cascade's min of the two impostor z-scores (`CascadeCalibration.score`); the table
gives how far g moves against the shipped pipeline, over impostor and genuine pairs, and
where the highest impostor pair lands.

This is what `gallery.cascade.CASCADE_FLOOR_MARGIN_Z` is sized from: a threshold only
float noise above the highest impostor seen (0.01) is crossed by that same pair once the
pixels change a little. The second table is the price of each margin: genuine pairs of
the set still at or above the floor. The third is each model alone at its own
single-model threshold (`FACECRM_EMBEDDER=dlib` or `sface` without the cascade): its
highest impostor pair and the impostor pairs it would accept under each preprocessing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage

from facecrm.config import Settings, configure
from facecrm.eval import runner
from facecrm.eval.runner import Embedded, embed_set
from facecrm.gallery.cascade import CASCADE_FLOOR_MARGIN_Z, FLOOR_MARGIN_Z
from facecrm.gallery.threshold import load_calibration, load_cascade
from facecrm.vision import detect, image

from common import (
    faces_dir,
    identity_tree_with_distractors,
    link_model_cache,
    machine,
    smoke_faces,
)

FMR = 1e-3


def _area(img: np.ndarray, scale: float) -> np.ndarray:
    height, width = img.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA), np.uint8)


def _bilinear(img: np.ndarray, scale: float) -> np.ndarray:
    height, width = img.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_LINEAR), np.uint8)


@contextlib.contextmanager
def _reencoded(quality: int) -> Iterator[None]:
    """Every photo the pipeline reads is first re-encoded as a JPEG at `quality`."""
    original = runner.read_image

    def read(path: Path, settings: Settings):  # type: ignore[no-untyped-def]
        buffer = io.BytesIO()
        PILImage.fromarray(original(path, settings)).save(buffer, "JPEG", quality=quality)
        return image.decode_image(buffer.getvalue(), settings)

    runner.read_image = read  # type: ignore[assignment]
    try:
        yield
    finally:
        runner.read_image = original  # type: ignore[assignment]


@contextlib.contextmanager
def _downscale(resize: Callable[[np.ndarray, float], np.ndarray]) -> Iterator[None]:
    original = detect._downscale
    detect._downscale = resize
    try:
        yield
    finally:
        detect._downscale = original


def _embed(root: Path, settings: Settings) -> tuple[list[Embedded], list[Embedded]]:
    first, _ = embed_set(root, settings)
    second, _ = embed_set(root, settings.model_copy(update={"embedder": "sface"}))
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tests/data, seconds")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    args = parser.parse_args()
    faces = smoke_faces() if args.smoke else faces_dir()
    root = identity_tree_with_distractors(faces, more=True)
    data_dir = Path(tempfile.mkdtemp(prefix="facecrm-noise-"))
    link_model_cache(data_dir, args.model_cache)
    settings = configure(data_dir=data_dir)
    cal = load_cascade("dlib-resnet-v1")
    assert cal is not None
    print(f"machine: {machine()}")

    def pair_scores(first: list[Embedded], second: list[Embedded]) -> np.ndarray:
        """Per pair (upper triangle): dlib's similarity, SFace's, and g."""
        if any(e.template is None for e in first + second):
            raise SystemExit("a photo of the set has no face: this benchmark needs every pair")
        a = np.stack([e.template for e in first])  # type: ignore[misc]
        b = np.stack([e.template for e in second])  # type: ignore[misc]
        upper = np.triu_indices(len(a), 1)
        s1, s2 = (a @ a.T)[upper], (b @ b.T)[upper]
        z1 = (s1 - cal.first.impostor_mean) / cal.first.impostor_std
        z2 = (s2 - cal.second.impostor_mean) / cal.second.impostor_std
        return np.asarray(np.stack([s1, s2, np.minimum(z1, z2)]), np.float64)

    calibrations = {
        "dlib": load_calibration(cal.first.model_id),
        "SFace": load_calibration(cal.second.model_id),
    }
    singles = {m: c.threshold(FMR) for m, c in calibrations.items()}
    alone: dict[str, np.ndarray] = {}

    shipped = _embed(root, settings)
    alone["as shipped"] = pair_scores(*shipped)
    g0 = alone["as shipped"][2]
    ids = np.array([e.sample.identity for e in shipped[0]])
    names = [e.sample.path for e in shipped[0]]
    i, j = np.triu_indices(len(ids), 1)
    genuine = ids[i] == ids[j]
    top = int(np.argmax(np.where(genuine, -np.inf, g0)))
    print(
        f"{len(ids)} photos, {int((~genuine).sum())} impostor and {int(genuine.sum())} genuine "
        f"pairs; highest impostor pair: {names[i[top]]} ~ {names[j[top]]}, g {g0[top]:.3f} "
        f"(the shipped calibration's: {cal.impostor_max_z:.3f})\n"
    )
    variants: dict[str, contextlib.AbstractContextManager[None]] = {
        "detector input: one INTER_AREA (before)": _downscale(_area),
        "detector input: bilinear only": _downscale(_bilinear),
        "JPEG decoded at decode_max_side 640": contextlib.nullcontext(),
        "JPEG re-encoded at quality 90": _reencoded(90),
    }
    print(
        "| preprocessing against the shipped pipeline | impostor Δg sd | impostor |Δg| p99 "
        "| impostor |Δg| max | genuine Δg sd | highest impostor pair's g |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, variant in variants.items():
        with variant:
            changed = settings
            if name.startswith("JPEG decoded"):
                changed = settings.model_copy(update={"decode_max_side": 640})
            alone[name] = pair_scores(*_embed(root, changed))
        g = alone[name][2]
        d = g - g0
        print(
            f"| {name} | {d[~genuine].std():.3f} | {np.percentile(abs(d[~genuine]), 99):.3f} | "
            f"{abs(d[~genuine]).max():.3f} | {d[genuine].std():.3f} | "
            f"{g[top]:.3f} ({d[top]:+.3f}) |"
        )
    print()
    joint = cal.threshold_z(FMR, -math.inf)  # no floor: the modelled tail alone
    print(f"(the modelled joint tail alone would put the threshold at g {joint:.3f})\n")
    print("| floor margin (z above the highest impostor) | threshold g | genuine pairs above |")
    print("| --- | ---: | ---: |")
    for margin in sorted({0.01, 0.1, CASCADE_FLOOR_MARGIN_Z, 0.2, 0.25, 0.3}):
        threshold = cal.threshold_z(FMR, margin)
        shipped_mark = " (shipped)" if margin == CASCADE_FLOOR_MARGIN_Z else ""
        print(
            f"| {margin:.2f}{shipped_mark} | {threshold:.3f} | "
            f"{int((g0[genuine] >= threshold).sum())} of {int(genuine.sum())} |"
        )
    print()
    head = " | ".join(
        f"{m} alone: highest impostor (threshold {t:.3f}) | impostor pairs accepted"
        for m, t in singles.items()
    )
    print(f"| preprocessing | {head} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, rows in alone.items():
        cells = " | ".join(
            f"{rows[k][~genuine].max():.3f} | {int((rows[k][~genuine] >= t).sum())}"
            for k, t in enumerate(singles.values())
        )
        print(f"| {name} | {cells} |")
    print()
    print(
        "| single-model floor margin (z) | "
        + " | ".join(f"{m} threshold | {m} genuine pairs above" for m in calibrations)
        + " |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    shipped_rows = alone["as shipped"]
    for margin in sorted({0.01, 0.05, 0.1, FLOOR_MARGIN_Z, 0.15, 0.2, 0.25}):
        cells = []
        for k, c in enumerate(calibrations.values()):
            t = c.threshold(FMR, margin)
            cells.append(
                f"{t:.3f} | {int((shipped_rows[k][genuine] >= t).sum())} of {int(genuine.sum())}"
            )
        mark = " (shipped)" if margin == FLOOR_MARGIN_Z else ""
        print(f"| {margin:.2f}{mark} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
