"""The cascade's second opinion: SFace on its own five-point chip of the same detected face.

The first stage (dlib's ResNet) works on dlib's 150 px chip; SFace was trained on the
ArcFace-aligned 112 px chip, so it gets its own alignment of the same `Face` (landmarks
from the one detection, no second detector run). Built once per process and settings,
like the pipeline; `faces_embedded` counts the faces it embedded (the cost the cascade's
skip rule saves is visible in tests and benchmarks).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from facecrm.config import Settings
from facecrm.vision.align import FivePointAligner
from facecrm.vision.embed import Embedder, sface_onnx
from facecrm.vision.types import Face, Image


class SecondOpinion:
    """An embedder with its own aligner, run only on the faces the cascade asks about."""

    def __init__(self, embedder: Embedder, aligner: FivePointAligner) -> None:
        self.embedder = embedder
        self.aligner = aligner
        self.faces_embedded = 0
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    def chip(self, image: Image, face: Face) -> Image:
        """The second model's chip of a detected face (cheap: one affine warp)."""
        return self.aligner.align(image, face)

    def embed_chips(self, chips: Sequence[Image]) -> npt.NDArray[np.float32]:
        """Templates of aligned chips (one batched call)."""
        with self._lock:
            self.faces_embedded += len(chips)
        return self.embedder.embed(list(chips))

    def embed(self, image: Image, faces: Sequence[Face]) -> npt.NDArray[np.float32]:
        """Templates of `faces` detected in `image`."""
        return self.embed_chips([self.chip(image, f) for f in faces])


def build_second_opinion(settings: Settings) -> SecondOpinion:
    """SFace (folded to float32 once into the model cache) run by onnxruntime."""
    embedder = sface_onnx(settings.cache_dir, settings.threads)
    return SecondOpinion(embedder, FivePointAligner(embedder.chip_size))


_cache: dict[tuple[str, int], SecondOpinion] = {}
_cache_lock = threading.Lock()


def default_second_opinion(settings: Settings) -> SecondOpinion:
    """One per process and (model cache, threads): the model loads once, not per caller."""
    key = (str((settings.cache_dir / "models").resolve()), settings.threads)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build_second_opinion(settings)
        return _cache[key]
