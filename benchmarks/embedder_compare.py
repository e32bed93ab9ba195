"""Choose the embedder by measurement: dlib ResNet, SFace, and their fused score.

    python benchmarks/embedder_compare.py
    python benchmarks/embedder_compare.py --smoke    # tests/data, every 25th frame, seconds

Genuine pairs: every same-person pair of `identities/`, plus Lin-Manuel
Miranda's portrait against his face in every 5th frame of the video (a store
camera's view: motion, stage light, turned heads). Impostor pairs: every pair
of different people among identities and distractors. For each embedder:

* d' = (mean genuine - mean impostor) / pooled std — separation, higher is better;
* the operating threshold at FMR 1e-3 from a calibration fitted on these
  impostors, and the share of genuine pairs (and of video frames) it accepts.

The fused score is the mean of the two embedders' impostor z-scores.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np

from facecrm.config import configure
from facecrm.eval.runner import embed_set
from facecrm.gallery.threshold import Calibration
from facecrm.vision.pipeline import build_pipeline

from common import (
    faces_dir,
    identity_tree_with_distractors,
    link_model_cache,
    machine,
    smoke_faces,
    video_frames,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tests/data, few frames, seconds")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    args = parser.parse_args()
    faces = smoke_faces() if args.smoke else faces_dir()
    root = identity_tree_with_distractors(faces)
    frames = video_frames(faces / "video" / "short_hamilton_clip.mp4", 25 if args.smoke else 5)
    data_dir = Path(tempfile.mkdtemp(prefix="facecrm-bench-"))
    link_model_cache(data_dir, args.model_cache)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for embedder in ("dlib", "sface"):
        settings = configure(data_dir=data_dir, embedder=embedder)
        embedded, _ = embed_set(root, settings)
        genuine, impostor = [], []
        for x, y in itertools.combinations(embedded, 2):
            if x.template is None or y.template is None:
                continue
            same = x.sample.identity == y.sample.identity
            (genuine if same else impostor).append(float(x.template @ y.template))
        pipeline = build_pipeline(settings)
        lin = next(e for e in embedded if e.sample.identity == "lin_manuel_miranda").template
        video = []
        for frame in frames:
            found = pipeline.faces(frame)
            if found:  # the largest face is Lin-Manuel in all but the last frames
                video.append(float(found[0].template @ lin))
        scores[embedder] = {
            "genuine": np.array(genuine),
            "impostor": np.array(impostor),
            "video": np.array(video[: int(len(video) * 0.9)]),  # drop the other actor's frames
        }

    def z(embedder: str, values: np.ndarray) -> np.ndarray:
        imp = scores[embedder]["impostor"]
        return (values - imp.mean()) / imp.std(ddof=1)

    scores["fused (dlib + sface z-mean)"] = {
        k: (z("dlib", scores["dlib"][k]) + z("sface", scores["sface"][k])) / 2
        for k in ("genuine", "impostor", "video")
    }
    print(f"machine: {machine()}\n")
    print(
        "| embedder | genuine / impostor pairs | d' | threshold @ FMR 1e-3 | "
        "genuine pairs accepted | video frames accepted |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, s in scores.items():
        gen, imp, vid = s["genuine"], s["impostor"], s["video"]
        d_prime = (gen.mean() - imp.mean()) / np.sqrt((gen.var() + imp.var()) / 2)
        threshold = Calibration.fit(name, imp, gen).threshold(1e-3)
        print(
            f"| {name} | {len(gen)} / {len(imp)} | {d_prime:.2f} | {threshold:.3f} | "
            f"{np.mean(gen >= threshold):.3f} | {np.mean(vid >= threshold):.3f} "
            f"({len(vid)}) |"
        )


if __name__ == "__main__":
    main()
