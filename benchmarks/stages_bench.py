"""Per-stage latency of the face pipeline, one core, on `../shared/faces`.

    python benchmarks/stages_bench.py
    python benchmarks/stages_bench.py --smoke    # tests/data, 2 repeats, 10k search, seconds
    python benchmarks/stages_bench.py --cpu      # CPU time of this process, not wall clock

* decode, detect, align, quality, embed per image/face on every photo;
* detection of a 640x480 frame: YuNet on onnxruntime (facecrm), YuNet in
  OpenCV, dlib's HOG (the face_recognition default);
* each embedder's cost per face: dlib's ResNet in dlib, the same network
  converted to ONNX (batch 1 and 8), SFace in OpenCV and in onnxruntime (its PRelu as
  shipped, and rewritten as facecrm serves it; batch 1 and 4);
* the detector's downscale of a 900x1200 and a 3000x4000 portrait photo to 640 px: one
  fractional INTER_AREA (before issue 12 item 4) against the integer box reduction +
  bilinear facecrm runs since the cascade's floor margin absorbs its noise
  (benchmarks/README.md, "Preprocessing noise");
* 1:N search of one face in galleries of 1k and 100k templates (exact).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from facecrm.config import configure
from facecrm.gallery.gallery import Gallery
from facecrm.vision import detect
from facecrm.vision.detect import DlibHogDetector
from facecrm.vision.embed import DlibResNetEmbedder, OnnxEmbedder, SFaceEmbedder, sface_onnx
from facecrm.vision.image import read_image
from facecrm.vision.models import sface_path, yunet_path
from facecrm.vision.onnx_models import cached_model, dequantize
from facecrm.vision.pipeline import build_pipeline

from common import faces_dir, link_model_cache, machine, smoke_faces

REPEATS = {"scale": 1.0}  # --smoke times every call twice
CLOCK = {"now": time.perf_counter}  # --cpu: time.process_time (a shared machine's honest figure)


def per_call_ms(fn: Callable[[], object], repeat: int = 20) -> float:
    repeat = max(1, round(repeat * REPEATS["scale"]))
    fn()
    start = CLOCK["now"]()
    for _ in range(repeat):
        fn()
    return (CLOCK["now"]() - start) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tests/data, few repeats, seconds")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    parser.add_argument("--cpu", action="store_true", help="CPU time of the process, not wall")
    args = parser.parse_args()
    if args.smoke:
        REPEATS["scale"] = 0.1
    if args.cpu:
        CLOCK["now"] = time.process_time
    cv2.setNumThreads(1)
    data_dir = Path(tempfile.mkdtemp(prefix="facecrm-bench-"))
    link_model_cache(data_dir, args.model_cache)
    settings = configure(data_dir=data_dir, threads=1)
    pipeline = build_pipeline(settings)
    faces = smoke_faces() if args.smoke else faces_dir()
    paths = sorted(p for p in faces.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    print(f"machine: {machine()}; one thread\n")

    stages: dict[str, list[float]] = {k: [] for k in ("decode", "detect", "align+quality")}
    chips = []
    for path in paths:
        t0 = time.perf_counter()
        image = read_image(path, settings)
        t1 = time.perf_counter()
        found = pipeline.detector.detect(image)
        t2 = time.perf_counter()
        for face in found:
            chip = pipeline.aligner.align(image, face)
            pipeline.gate.assess(face, chip)
            chips.append(chip)
        t3 = time.perf_counter()
        stages["decode"].append((t1 - t0) * 1000)
        stages["detect"].append((t2 - t1) * 1000)
        if found:
            stages["align+quality"].append((t3 - t2) * 1000 / len(found))
    print(f"{len(paths)} photos, {len(chips)} faces\n")
    print("| stage | mean ms | p50 ms | max ms | unit |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, values in stages.items():
        unit = "per face" if name == "align+quality" else "per photo (full size)"
        print(
            f"| {name} | {np.mean(values):.1f} | {np.median(values):.1f} | "
            f"{np.max(values):.1f} | {unit} |"
        )

    frame = cv2.resize(read_image(faces / "scenes" / "multiface.jpg", settings), (640, 480))
    opencv = cv2.FaceDetectorYN.create(str(yunet_path()), "", (640, 480), 0.6, 0.3, 5000)
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    hog = DlibHogDetector(upsample=1)
    table(
        "640x480 frame, 6 faces",
        {
            "YuNet, onnxruntime float32 (facecrm)": per_call_ms(
                lambda: pipeline.detector.detect(frame), 50
            ),
            "YuNet int8, OpenCV FaceDetectorYN": per_call_ms(lambda: opencv.detect(bgr), 50),
            "dlib HOG, upsample 1 (face_recognition)": per_call_ms(lambda: hog.detect(frame), 10),
        },
    )

    batch = chips[:8]
    native, onnx_resnet, sface = DlibResNetEmbedder(), pipeline.embedder, SFaceEmbedder()
    plain_path = cached_model(
        settings.cache_dir, "sface_prelu_as_shipped.onnx", lambda t: dequantize(sface_path(), t)
    )
    sface_plain = OnnxEmbedder(plain_path, input_size=112, mean=0.0, std=1.0)
    sface_served = sface_onnx(settings.cache_dir)
    sface_chips = [cv2.resize(c, (112, 112)) for c in batch]
    table(
        "embedder, ms per face",
        {
            "dlib ResNet in dlib": per_call_ms(lambda: native.embed(batch[:1]), 10),
            "dlib ResNet in onnxruntime, batch 1 (facecrm)": per_call_ms(
                lambda: onnx_resnet.embed(batch[:1]), 50
            ),
            "dlib ResNet in onnxruntime, batch 8": per_call_ms(lambda: onnx_resnet.embed(batch), 10)
            / len(batch),
            "SFace int8 in OpenCV": per_call_ms(lambda: sface.embed(sface_chips[:1]), 20),
            "SFace in onnxruntime, PRelu as shipped (before issue 12)": per_call_ms(
                lambda: sface_plain.embed(sface_chips[:1]), 20
            ),
            "SFace in onnxruntime, PRelu rewritten, batch 1 (facecrm)": per_call_ms(
                lambda: sface_served.embed(sface_chips[:1]), 20
            ),
            "SFace in onnxruntime, PRelu rewritten, batch 4": per_call_ms(
                lambda: sface_served.embed(sface_chips[:4]), 10
            )
            / 4,
        },
    )

    downscales = {}
    for height, width in ((1200, 900), (4000, 3000)):
        photo = cv2.resize(chips[0], (width, height))
        scale = 640 / height
        size = (round(width * scale), 640)
        downscales[f"{width}x{height}: one INTER_AREA, fractional factor (before)"] = per_call_ms(
            lambda p=photo, z=size: cv2.resize(p, z, interpolation=cv2.INTER_AREA), 20
        )
        downscales[f"{width}x{height}: box reduction + bilinear (facecrm)"] = per_call_ms(
            lambda p=photo, f=scale: detect._downscale(p, f), 20
        )
    table("detector downscale to 640 px", downscales)

    rng = np.random.default_rng(0)
    query = onnx_resnet.embed(batch[:1])
    searches = {}
    for size in (1_000, 10_000) if args.smoke else (1_000, 100_000):
        vectors = rng.standard_normal((size, 128)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        gallery = Gallery(128, ann_min_size=10**9)
        gallery.add(range(size), [f"c{i // 3}" for i in range(size)], vectors)
        searches[f"{size:,} templates"] = per_call_ms(lambda g=gallery: g.identify(query, 0.9))
    table("search of one face, exact", searches)


def table(title: str, rows: dict[str, float]) -> None:
    print(f"\n| {title} | ms |")
    print("| --- | ---: |")
    for label, ms in rows.items():
        print(f"| {label} | {ms:.2f} |")


if __name__ == "__main__":
    main()
