"""Would int8 recognition models halve an identification's CPU, and at what price?

    python benchmarks/int8_study.py           # ../shared/faces
    python benchmarks/int8_study.py --smoke   # tests/data, about a minute (a test runs it)

Issue 12 item 4 asks to halve the CPU of `/identify`; after the cheaper decoder and
detector input, what is left is mostly the two networks in float32 (benchmarks/README.md,
"Where the CPU of a request goes"). onnxruntime's static quantization is the usual next
step, so this measures it on the product's own models: dlib's ResNet and SFace, quantized
per channel (int8 weights, uint8 activations, QDQ: onnxruntime's QOperator form gave SFace
templates unrelated to its float32 ones, cosine ~0.1), their activation ranges
calibrated on chips of photos *outside* the threshold calibration set (scenes/,
more/expressions/ and every 15th frame of video/).

Reported, on the calibration set (identities + more/identities + distractors, the set the
shipped thresholds come from): milliseconds per chip in float32 and int8, through the
product's `OnnxEmbedder.embed` (one thread); how close each int8 template is to its
float32 one; and the decisions at the shipped
thresholds with dlib, or both models, in int8 — the cascade's g (impostor pairs accepted,
genuine pairs kept, how far g moves, the highest impostor) and each model alone.
"int8 ~ int8" is a new chain; "float32 gallery ~ int8 probe" is an existing chain that
switches: its templates stay as enrolled (there are no photos to re-embed), so every
comparison is across the two. For those, g is computed in both directions of a pair and
an impostor pair counts with the higher, a genuine pair with the lower: the worst case
of each (and so for each model alone). Nothing of this
is shipped; benchmarks/README.md says why.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from facecrm.config import Settings, configure
from facecrm.eval.runner import scan
from facecrm.gallery.threshold import load_calibration, load_cascade
from facecrm.vision.embed import DLIB_ONNX, SFACE_FP32, OnnxEmbedder
from facecrm.vision.image import read_image
from facecrm.vision.onnx_models import ort_session
from facecrm.vision.pipeline import build_pipeline
from facecrm.vision.types import Image

from common import (
    faces_dir,
    identity_tree_with_distractors,
    link_model_cache,
    machine,
    smoke_faces,
    video_frames,
)

FMR = 1e-3


def calibration_images(faces: Path, settings: Settings, every: int) -> list[Image]:
    """Photos and video frames that are not in the threshold calibration set."""
    files = sorted((faces / "scenes").glob("*.jpg"))
    files += sorted((faces / "more" / "expressions").rglob("*.jpg"))
    images = [read_image(f, settings) for f in files]
    images += video_frames(faces / "video" / "short_hamilton_clip.mp4", every)
    return images


def quantize(source: Path, target: Path, inputs: list[np.ndarray]) -> None:
    """`source` quantized to int8 with activation ranges from `inputs` (one chip each)."""
    name = ort_session(source).get_inputs()[0].name
    feeds = iter([{name: x[None]} for x in inputs])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    prepared = target.with_suffix(".prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        per_channel=True,
    )


def ms_per_chip(embedder: OnnxEmbedder, chip: Image, repeat: int) -> float:
    """One chip through the product's `OnnxEmbedder.embed`, median of 5 runs."""
    for _ in range(3):
        embedder.embed([chip])
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            embedder.embed([chip])
        runs.append((time.perf_counter() - start) / repeat * 1000)
    return float(np.median(runs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tests/data, about a minute")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    args = parser.parse_args()
    faces = smoke_faces() if args.smoke else faces_dir()
    data_dir = Path(tempfile.mkdtemp(prefix="facecrm-int8-"))
    link_model_cache(data_dir, args.model_cache)
    settings = configure(data_dir=data_dir)
    pipelines = {
        "dlib": build_pipeline(settings),
        "SFace": build_pipeline(settings.model_copy(update={"embedder": "sface"})),
    }
    models = {"dlib": DLIB_ONNX, "SFace": SFACE_FP32}
    print(f"machine: {machine()}; onnxruntime {ort.__version__}")

    root = identity_tree_with_distractors(faces, more=True)
    samples = scan(root)
    set_images = [read_image(root / s.path, settings) for s in samples]
    quant_images = calibration_images(faces, settings, every=60 if args.smoke else 15)
    templates: dict[tuple[str, str], np.ndarray] = {}
    print(
        f"{len(samples)} photos in the calibration set; int8 ranges from "
        f"{len(quant_images)} other photos and frames\n"
    )
    print(
        "| model | chips for the ranges | float32 ms / chip | int8 ms / chip "
        "| int8 ~ float32 template cosine, min / mean |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, pipeline in pipelines.items():
        served = pipeline.embedder
        assert isinstance(served, OnnxEmbedder)
        chips = [f.chip for im in quant_images for f in pipeline.faces(im, embed=False)]
        largest = []
        for im in set_images:
            found = pipeline.faces(im, embed=False)
            if not found:
                raise SystemExit("a photo of the set has no face: this study needs every pair")
            largest.append(found[0].chip)
        target = data_dir / f"{label}.int8.onnx"
        source = settings.cache_dir / "models" / models[label]
        quantize(source, target, list(served.network_input(chips)))  # type: ignore[arg-type]
        int8 = OnnxEmbedder(
            target,
            input_size=served.chip_size,
            mean=served.mean,
            std=served.std,
            model_id=served.model_id,
        )
        repeat = 5 if args.smoke else 40
        fp32_ms, int8_ms = (ms_per_chip(e, largest[0], repeat) for e in (served, int8))
        for kind, embedder in (("float32", served), ("int8", int8)):
            templates[(label, kind)] = np.asarray(embedder.embed(largest), np.float64)  # type: ignore[arg-type]
        cosine = (templates[(label, "float32")] * templates[(label, "int8")]).sum(axis=1)
        print(
            f"| {label} | {len(chips)} | {fp32_ms:.2f} | {int8_ms:.2f} | "
            f"{cosine.min():.4f} / {cosine.mean():.4f} |"
        )

    cal = load_cascade("dlib-resnet-v1")
    assert cal is not None
    threshold = cal.threshold_z(FMR)
    singles = [load_calibration(m.model_id).threshold(FMR) for m in (cal.first, cal.second)]
    ids = np.array([s.identity for s in samples])
    i, j = np.triu_indices(len(ids), 1)
    genuine = ids[i] == ids[j]

    def worse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Of a pair's two directions, the higher for an impostor pair, the lower for a
        genuine one."""
        return np.where(genuine, np.minimum(a, b), np.maximum(a, b))

    def scores(gallery: dict[str, str], probe: dict[str, str]) -> list[np.ndarray]:
        """Per pair, each in its worse direction: dlib's similarity and SFace's (each model
        alone), and the cascade's g (computed each way, then the worse)."""
        ways = []
        for first, second in ((i, j), (j, i)):
            sims = [
                np.sum(templates[(m, gallery[m])][first] * templates[(m, probe[m])][second], axis=1)
                for m in ("dlib", "SFace")
            ]
            z1 = (sims[0] - cal.first.impostor_mean) / cal.first.impostor_std
            z2 = (sims[1] - cal.second.impostor_mean) / cal.second.impostor_std
            ways.append([*sims, np.minimum(z1, z2)])
        return [worse(a, b) for a, b in zip(*ways, strict=True)]

    float32 = {"dlib": "float32", "SFace": "float32"}
    g0 = scores(float32, float32)[2]
    print(
        f"\ncascade threshold g {threshold:.3f}; alone: dlib {singles[0]:.3f}, "
        f"SFace {singles[1]:.3f}; {int((~genuine).sum())} impostor and "
        f"{int(genuine.sum())} genuine pairs\n"
    )
    print(
        "| int8 models | gallery ~ probe | impostor Δg sd | impostor |Δg| max "
        "| highest impostor g | impostor pairs accepted | genuine pairs kept "
        "| dlib alone: impostors accepted / genuine kept "
        "| SFace alone: impostors accepted / genuine kept |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    cases = [("none", "float32 ~ float32", float32, float32)]
    for which in (("dlib",), ("dlib", "SFace")):
        quantized = {m: "int8" if m in which else "float32" for m in ("dlib", "SFace")}
        name = " + ".join(which)
        cases += [
            (name, "int8 ~ int8", quantized, quantized),
            (name, "float32 ~ int8", float32, quantized),
        ]
    for name, kind, gallery, probe in cases:
        dlib, sface, g = scores(gallery, probe)
        d = g - g0
        alone = " | ".join(
            f"{int((s[~genuine] >= t).sum())} / {int((s[genuine] >= t).sum())}"
            for s, t in ((dlib, singles[0]), (sface, singles[1]))
        )
        print(
            f"| {name} | {kind} | {d[~genuine].std():.3f} | {abs(d[~genuine]).max():.3f} | "
            f"{g[~genuine].max():.3f} | {int((g[~genuine] >= threshold).sum())} | "
            f"{int((g[genuine] >= threshold).sum())} of {int(genuine.sum())} | {alone} |"
        )


if __name__ == "__main__":
    main()
