"""End-to-end images/second: facecrm against the face_recognition-style pipeline.

    python benchmarks/throughput_bench.py [--repeat 3]
    python benchmarks/throughput_bench.py --smoke    # the 6 smallest identity photos of tests/data

Both pipelines run on the same images (every photo of `../shared/faces`:
identities, distractors, scenes), each in a fresh Python process that is timed
as a whole (interpreter start, imports, model loading included), with one and
with two worker processes. Each process returns the template of the largest
face per image; verification accuracy over all pairs of the identity photos is
computed from them, each pipeline at its own operating threshold:

* baseline — what `face_recognition.face_encodings` does: Pillow decode at full
  resolution, dlib's HOG detector (upsample 1), dlib's 5-point predictor,
  dlib's ResNet run by dlib; same person when the distance is below 0.6;
* facecrm — `build_pipeline()` defaults, threshold from the shipped calibration.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from common import REPO, faces_dir, link_model_cache, machine, smoke_faces

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}

_state: dict[str, object] = {}


def _baseline_init() -> None:
    import dlib
    import face_recognition_models as frm

    _state["detector"] = dlib.get_frontal_face_detector()
    _state["shape"] = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    _state["net"] = dlib.face_recognition_model_v1(frm.face_recognition_model_location())


def _baseline_one(path: str) -> list[float] | None:
    from PIL import Image

    image = np.array(Image.open(path).convert("RGB"))
    rects = _state["detector"](image, 1)  # type: ignore[operator]
    if not rects:
        return None
    rect = max(rects, key=lambda r: r.width() * r.height())
    shape = _state["shape"](image, rect)  # type: ignore[operator]
    return list(_state["net"].compute_face_descriptor(image, shape, 1))  # type: ignore[attr-defined]


def _facecrm_init(data_dir: str) -> None:
    from facecrm.config import configure
    from facecrm.vision.pipeline import build_pipeline

    _state["settings"] = configure(data_dir=Path(data_dir))
    _state["pipeline"] = build_pipeline(_state["settings"])


def _facecrm_one(path: str) -> list[float] | None:
    from facecrm.vision.image import read_image

    image = read_image(path, _state["settings"])  # type: ignore[arg-type]
    faces = _state["pipeline"].faces(image)  # type: ignore[attr-defined]
    return faces[0].template.tolist() if faces else None


def worker(kind: str, processes: int, files: list[str], data_dir: str) -> None:
    """Child process: embed `files`, print {file: template} and the inner seconds."""
    init, one, args = (
        (_baseline_init, _baseline_one, ())
        if kind == "baseline"
        else (_facecrm_init, _facecrm_one, (data_dir,))
    )
    start = time.perf_counter()
    if processes == 1:
        init(*args)
        templates = [one(f) for f in files]
    else:
        with Pool(processes, initializer=init, initargs=args) as pool:
            templates = pool.map(one, files, chunksize=1)
    json.dump({"seconds": time.perf_counter() - start, "templates": templates}, sys.stdout)


def run(kind: str, processes: int, files: list[str], data_dir: str) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            kind,
            "--processes",
            str(processes),
            "--data-dir",
            data_dir,
            *files,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO / "benchmarks",
    )
    return time.perf_counter() - start, json.loads(out.stdout)


def accuracy(files: list[str], templates: list, kind: str) -> float:
    """Verification accuracy over all pairs of identity photos (missing face: rejected)."""
    from facecrm.gallery.threshold import load_calibration

    threshold = load_calibration("dlib-resnet-v1").threshold(
        float(os.environ.get("FACECRM_TARGET_FMR", "1e-3"))
    )
    seen: dict[str, tuple[str, list | None]] = {}
    for f, t in zip(files, templates, strict=True):
        if "/identities/" in f:
            seen[f] = (Path(f).parent.name, t)
    correct = total = 0
    for (ia, ta), (ib, tb) in itertools.combinations(seen.values(), 2):
        if ta is None or tb is None:
            accepted = False
        elif kind == "baseline":
            accepted = float(np.linalg.norm(np.subtract(ta, tb))) < 0.6
        else:
            accepted = float(np.dot(ta, tb)) >= threshold
        correct += accepted == (ia == ib)
        total += 1
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=["baseline", "facecrm"])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tests/data identities, once")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.processes, args.files, args.data_dir)
        return
    faces = smoke_faces() / "identities" if args.smoke else faces_dir()
    images = sorted(str(p) for p in faces.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if args.smoke:  # HOG is slow on large photos; these have genuine and impostor pairs
        from PIL import Image

        images = sorted(images, key=lambda f: Image.open(f).size[0] * Image.open(f).size[1])[:6]
        args.repeat = 1
    files = images * args.repeat
    data_dir = tempfile.mkdtemp(prefix="facecrm-bench-")
    link_model_cache(Path(data_dir), args.model_cache)
    _, _ = run("facecrm", 1, images[:1], data_dir)  # build the derived models once
    print(f"machine: {machine()}")
    print(f"{len(images)} images x {args.repeat} = {len(files)} per run\n")
    print(
        "| pipeline | processes | whole process s | images/s | faces found | "
        "verification accuracy (identity pairs) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rates = {}
    for kind in ("baseline", "facecrm"):
        for processes in (1, 2):
            wall, out = run(kind, processes, files, data_dir)
            rate = len(files) / wall
            rates[(kind, processes)] = rate
            found = sum(t is not None for t in out["templates"][: len(images)])
            acc = accuracy(files[: len(images)], out["templates"][: len(images)], kind)
            name = "face_recognition-style (HOG + dlib ResNet)" if kind == "baseline" else "facecrm"
            print(
                f"| {name} | {processes} | {wall:.1f} | {rate:.2f} | "
                f"{found}/{len(images)} | {acc:.4f} |",
                flush=True,
            )
    print()
    for processes in (1, 2):
        ratio = rates[("facecrm", processes)] / rates[("baseline", processes)]
        print(f"speed-up with {processes} process(es) each: {ratio:.1f}x")
    best = rates[("facecrm", 2)] / rates[("baseline", 1)]
    print(f"facecrm on 2 processes vs the baseline as users run it (1 process): {best:.1f}x")


if __name__ == "__main__":
    main()
