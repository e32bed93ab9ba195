"""Embedding: aligned chips in, unit-length templates out."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from facecrm.vision.models import dlib_resnet_path, sface_path
from facecrm.vision.onnx_models import (
    cached_model,
    dequantize,
    ort_session,
    prelu_as_convolutions,
)
from facecrm.vision.types import Image


class Embedder(Protocol):
    """Turns aligned chips into templates; `model_id` names the vector space."""

    model_id: str
    chip_size: int
    aligner_kind: str  # "dlib" or "five_point"

    def embed(self, chips: list[Image]) -> npt.NDArray[np.float32]: ...


def normalize(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """L2-normalise rows, so that the dot product is the cosine similarity."""
    vectors = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: npt.NDArray[np.float32] = vectors / np.maximum(norms, np.float32(1e-12))
    return normalized


class DlibResNetEmbedder:
    """dlib's ResNet (99.38% on LFW), run by dlib itself (the slow reference)."""

    model_id = "dlib-resnet-v1"
    chip_size = 150
    aligner_kind = "dlib"

    def __init__(self) -> None:
        import dlib

        self._net = dlib.face_recognition_model_v1(str(dlib_resnet_path()))

    def embed(self, chips: list[Image]) -> npt.NDArray[np.float32]:
        if not chips:
            return np.zeros((0, 128), dtype=np.float32)
        out = self._net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return normalize(np.array(out))


class SFaceEmbedder:
    """OpenCV zoo's SFace int8, run by OpenCV (the reference `sface_onnx` is checked against)."""

    model_id = "sface-2021dec"
    chip_size = 112
    aligner_kind = "five_point"

    def __init__(self) -> None:
        self._net = cv2.FaceRecognizerSF.create(str(sface_path()), "")

    def embed(self, chips: list[Image]) -> npt.NDArray[np.float32]:
        if not chips:
            return np.zeros((0, 128), dtype=np.float32)
        rows = [self._net.feature(cv2.cvtColor(c, cv2.COLOR_RGB2BGR)) for c in chips]
        return normalize(np.concatenate(rows))


class OnnxEmbedder:
    """Any ArcFace-style ONNX embedder (NCHW RGB input) run by onnxruntime.

    For a user-supplied model (e.g. an ArcFace file the user owns); its
    `model_id` is derived from the file's hash, so templates of different files
    never mix.
    """

    aligner_kind = "five_point"

    def __init__(
        self,
        path: Path,
        input_size: int = 112,
        mean: float = 127.5,
        std: float = 127.5,
        threads: int = 1,
        model_id: str | None = None,
        aligner_kind: str = "five_point",
    ) -> None:
        self._session = ort_session(path, threads)
        self._input = self._session.get_inputs()[0].name
        self.chip_size = input_size
        self.mean, self.std = mean, std
        self.aligner_kind = aligner_kind
        if model_id is None:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
            model_id = f"onnx-{digest}"
        self.model_id = model_id

    def network_input(self, chips: list[Image]) -> npt.NDArray[np.float32]:
        """The network's input for `chips` (non-empty): normalised, NCHW float32."""
        batch = (np.stack(chips).astype(np.float32) - self.mean) / self.std
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def embed(self, chips: list[Image]) -> npt.NDArray[np.float32]:
        if not chips:
            dim = self._session.get_outputs()[0].shape[-1]
            return np.zeros((0, dim if isinstance(dim, int) else 0), dtype=np.float32)
        (out,) = self._session.run(None, {self._input: self.network_input(chips)})[:1]
        return normalize(out)


DLIB_ONNX = "dlib_face_recognition_resnet_model_v1.onnx"  # in the model cache


def dlib_resnet_onnx(cache_dir: Path, threads: int = 1) -> OnnxEmbedder:
    """dlib's ResNet converted to ONNX (once, into `cache_dir`) and run by onnxruntime.

    The conversion is exact (descriptors agree with dlib's to ~1e-7), so the
    templates share dlib's `model_id`; onnxruntime is ~13x faster per face.
    """
    from facecrm.vision.dlib_onnx import convert

    path = cached_model(
        cache_dir,
        DLIB_ONNX,
        lambda target: convert(str(dlib_resnet_path()), str(target)),
    )
    return OnnxEmbedder(
        path,
        input_size=150,
        mean=0.0,
        std=1.0,
        threads=threads,
        model_id=DlibResNetEmbedder.model_id,
        aligner_kind="dlib",
    )


SFACE_FP32 = "face_recognition_sface_2021dec_fp32_dwprelu.onnx"  # new name: old caches rebuild


def _build_sface(target: Path) -> None:
    dequantize(sface_path(), target)
    prelu_as_convolutions(target)


def sface_onnx(cache_dir: Path, threads: int = 1) -> OnnxEmbedder:
    """SFace with its int8 weights folded once into float32 (into `cache_dir`), run by onnxruntime.

    The shipped int8 file keeps its weights as graph inputs, which onnxruntime refuses;
    `dequantize` rewrites it as a plain float graph, and `prelu_as_convolutions` its PRelu
    activations as ops onnxruntime runs twice as fast. The network sees the same weights
    as in OpenCV (descriptors agree to ~1e-6), so templates share SFace's `model_id`.
    Input: the 112 px ArcFace-aligned RGB chip, raw 0..255 (OpenCV's blob: no mean, no scale).
    """
    path = cached_model(cache_dir, SFACE_FP32, _build_sface)
    return OnnxEmbedder(
        path,
        input_size=112,
        mean=0.0,
        std=1.0,
        threads=threads,
        model_id=SFaceEmbedder.model_id,
        aligner_kind="five_point",
    )
