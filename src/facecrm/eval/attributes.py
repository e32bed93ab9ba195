"""`facecrm eval --attributes`: the attribute stage on a folder of labelled faces.

Layout (every part optional, at least one present)::

    DIR/expression/<label>/*.jpg   label: smiling, neutral, negative (or one of the 7
                                   FER2013 classes: angry, ..., neutral)
    DIR/gender/<label>/*.jpg       label: female or male
    DIR/age.csv                    path,age (path relative to DIR or absolute; years)

Each photo's largest detected face is scored; a photo without a face counts as wrong
(and is reported as `no_face`), so a detector miss never flatters the accuracy. Reported:
accuracy per class, the confusion matrix, and for age the band accuracy and the mean
absolute error in years (the only place an exact age estimate is used: here it is
compared with a label, never stored or reported about anyone).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from facecrm.errors import InvalidError
from facecrm.vision.attributes import (
    AGE_BANDS,
    GENDERS,
    SENTIMENTS,
    AttributeStage,
    age_band,
    expression_chip,
    sentiment_of,
)
from facecrm.vision.image import read_image
from facecrm.vision.keras_onnx import EMOTIONS
from facecrm.vision.pipeline import FacePipeline

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
NO_FACE = "no_face"


@dataclass(frozen=True, slots=True)
class Labelled:
    path: Path
    label: str


def _folder(directory: Path, task: str) -> list[Labelled]:
    root = directory / task
    if not root.is_dir():
        return []
    return [
        Labelled(p, label.name)
        for label in sorted(d for d in root.iterdir() if d.is_dir())
        for p in sorted(label.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]


def scan(directory: Path) -> tuple[list[Labelled], list[Labelled], list[tuple[Path, float]]]:
    """The labelled photos: expression, gender, and (path, age) pairs; refuses unknown labels."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    expressions = _folder(directory, "expression")
    genders = _folder(directory, "gender")
    labels = {s.label for s in expressions}
    if labels and not (labels <= set(SENTIMENTS) or labels <= set(EMOTIONS)):
        raise InvalidError(
            f"expression labels {sorted(labels)}: use {', '.join(SENTIMENTS)} "
            f"or the FER2013 classes {', '.join(EMOTIONS)}"
        )
    if unknown := {s.label for s in genders} - set(GENDERS):
        raise InvalidError(f"gender labels {sorted(unknown)}: use female or male")
    ages: list[tuple[Path, float]] = []
    age_csv = directory / "age.csv"
    if age_csv.is_file():
        with age_csv.open(newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    age = float(row["age"])
                    path = directory / row["path"]
                except (KeyError, TypeError, ValueError) as exc:
                    raise InvalidError(f"{age_csv}:{line}: expected path,age") from exc
                if not 0 <= age <= 120:
                    raise InvalidError(f"{age_csv}:{line}: age {age} out of range")
                ages.append((path, age))
    if not (expressions or genders or ages):
        raise FileNotFoundError(f"{directory} has no expression/, gender/ or age.csv")
    return expressions, genders, ages


def _classification(truth: list[str], predicted: list[str], order: list[str]) -> dict[str, object]:
    """Accuracy (overall and per true class) and the confusion matrix (rows: truth; columns:
    every class seen on either side, in `order`, then photos without a face)."""
    labels = [c for c in order if c in truth]
    columns = [c for c in order if c in truth or c in predicted]
    columns += [NO_FACE] if NO_FACE in predicted else []
    matrix = [[0] * len(columns) for _ in labels]
    for t, p in zip(truth, predicted, strict=True):
        matrix[labels.index(t)][columns.index(p)] += 1
    per_class: dict[str, dict[str, object]] = {}
    correct = 0
    for i, label in enumerate(labels):
        n, right = sum(matrix[i]), matrix[i][columns.index(label)]
        correct += right
        per_class[label] = {"n": n, "correct": right, "accuracy": right / n if n else None}
    return {
        "n": len(truth),
        "no_face": predicted.count(NO_FACE),
        "accuracy": correct / len(truth) if truth else None,
        "per_class": per_class,
        "confusion": {"truth": labels, "predicted": columns, "matrix": matrix},
    }


def evaluate(
    directory: Path,
    pipeline: FacePipeline,
    stage: AttributeStage,
    advance: Callable[[], None] = lambda: None,
) -> dict[str, object]:
    """Score the stage on `directory` (see the module doc); a JSON-ready report."""
    from facecrm import config

    expressions, genders, ages = scan(directory)
    limits = config.load()

    def largest_face(path: Path):  # type: ignore[no-untyped-def]
        image = read_image(path, limits)
        faces = pipeline.faces(image, embed=False)
        advance()
        return (image, faces[0]) if faces else (image, None)

    report: dict[str, object] = {"dataset": str(directory)}
    if expressions:
        by_sentiment = {s.label for s in expressions} <= set(SENTIMENTS)
        predicted = []
        for sample in expressions:
            image, face = largest_face(sample.path)
            if face is None:
                predicted.append(NO_FACE)
                continue
            (scores,) = stage.expression_scores([expression_chip(image, face)])
            best = EMOTIONS[int(scores.argmax())]
            predicted.append(sentiment_of(scores.tolist()) if by_sentiment else best)
        report["expression"] = {
            "granularity": "sentiment" if by_sentiment else "emotion",
            **_classification(
                [s.label for s in expressions],
                predicted,
                list(SENTIMENTS if by_sentiment else EMOTIONS),
            ),
        }
    if genders:
        predicted = []
        for sample in genders:
            image, face = largest_face(sample.path)
            if face is None:
                predicted.append(NO_FACE)
                continue
            small, _ = stage.dlib_chips(image, [face])
            predicted.append(GENDERS[int(stage.gender_scores(small)[0].argmax())])
        report["gender"] = _classification([s.label for s in genders], predicted, list(GENDERS))
    if ages:
        errors: list[float] = []
        band_truth, band_predicted = [], []
        for path, age in ages:
            image, face = largest_face(path)
            band_truth.append(age_band(age))
            if face is None:
                band_predicted.append(NO_FACE)
                continue
            _, large = stage.dlib_chips(image, [face])
            estimate = float(stage.age_years(large)[0])
            errors.append(abs(estimate - age))
            band_predicted.append(age_band(estimate))
        report["age"] = {
            "mae_years": sum(errors) / len(errors) if errors else None,
            "band": _classification(band_truth, band_predicted, [b for _, b in AGE_BANDS]),
        }
    return report


def _pct(value: object) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"  # type: ignore[arg-type]


def print_text(report: dict[str, object], console: Console) -> None:
    """Per task: accuracy per class and the confusion matrix; age: MAE and band accuracy."""
    console.print(f"dataset: {report['dataset']}")
    sections = [("expression", report.get("expression")), ("gender", report.get("gender"))]
    age = report.get("age")
    if isinstance(age, dict):
        sections.append(("age band", age["band"]))
    for title, part in sections:
        if not isinstance(part, dict):
            continue
        console.print(
            f"\n[bold]{title}[/bold]: {_pct(part['accuracy'])} of {part['n']} "
            f"({part['no_face']} without a detected face)"
        )
        confusion = part["confusion"]
        table = Table("truth \\ predicted", *confusion["predicted"], "n", "accuracy")
        for label, row in zip(confusion["truth"], confusion["matrix"], strict=True):
            stats = part["per_class"][label]
            table.add_row(label, *map(str, row), str(stats["n"]), _pct(stats["accuracy"]))
        console.print(table)
    if isinstance(age, dict):
        mae = age["mae_years"]
        console.print(f"age: mean absolute error {'n/a' if mae is None else f'{mae:.1f} years'}")


def plot_confusion(report: dict[str, object], path: Path) -> None:
    """The confusion matrices (counts) of every task in the report, into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [
        (title, part)
        for title, part in (
            ("expression", report.get("expression")),
            ("gender", report.get("gender")),
            ("age band", (report.get("age") or {}).get("band")),  # type: ignore[attr-defined]
        )
        if isinstance(part, dict)
    ]
    fig, axes = plt.subplots(1, len(parts), figsize=(4.5 * len(parts), 4), squeeze=False)
    for ax, (title, part) in zip(axes[0], parts, strict=True):
        confusion = part["confusion"]
        matrix = confusion["matrix"]
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(confusion["predicted"])), confusion["predicted"], rotation=45)
        ax.set_yticks(range(len(confusion["truth"])), confusion["truth"])
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center")
        ax.set_xlabel("predicted")
        ax.set_ylabel("truth")
        ax.set_title(f"{title}: {_pct(part['accuracy'])} of {part['n']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
