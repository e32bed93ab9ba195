"""Compute the shipped threshold calibrations from `../shared/faces`.

    python benchmarks/calibrate.py

Every pair of the 6 identities and 4 distractors is scored; impostor pairs
(different people) give the impostor distribution each embedder's threshold
is derived from (see `facecrm.gallery.threshold`).
"""

from __future__ import annotations

import itertools
import sys
from importlib import resources
from pathlib import Path

from facecrm.config import configure
from facecrm.eval.runner import embed_set, score
from facecrm.gallery.threshold import Calibration
from facecrm.vision.pipeline import build_embedder

from common import faces_dir, identity_tree_with_distractors


def main() -> None:
    root = identity_tree_with_distractors(faces_dir())
    target = Path(str(resources.files("facecrm.vision") / "calibration"))
    for embedder in sys.argv[1:] or ["dlib", "sface"]:
        settings = configure(embedder=embedder)
        model_id = build_embedder(settings).model_id
        embedded, _ = embed_set(root, settings, workers=2)
        impostor, genuine = [], []
        for x, y in itertools.combinations(embedded, 2):
            s = score(x.template, y.template)
            if s is not None:
                (genuine if x.sample.identity == y.sample.identity else impostor).append(s)
        calibration = Calibration.fit(
            model_id, impostor, genuine, source="../shared/faces identities + distractors"
        )
        calibration.save(target / f"{model_id}.json")
        print(model_id, calibration)
        for fmr in (1e-2, 1e-3, 1e-4, 1e-5):
            print(f"  FMR {fmr:g}: threshold {calibration.threshold(fmr):.4f}")


if __name__ == "__main__":
    main()
