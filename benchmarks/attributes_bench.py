"""The face-attribute stage: cost per face of each model, and accuracy on the labelled faces
of `../shared/faces`, one core.

    python benchmarks/attributes_bench.py
    python benchmarks/attributes_bench.py --smoke    # tests/data, few repeats, seconds

Cost: expression (tight-box chip + mini-Xception), the dlib 5-point chips (predictor + two
chips), gender and age, per face at batch 1 and batch 5 (five faces in one frame).

Accuracy (`facecrm.eval.attributes` on labelled folders built here from the face set):
* expression, smiling / neutral / negative: `more/expressions` (13 photos);
* smiling / neutral: the `expression: smiling|neutral` notes of `more/labels.csv`;
* gender: every identity photo (identities/, distractors/, more/identities/), labelled by
  benchmarks/genders.csv (from the people's and characters' names, not self-reported).
There is no age ground truth in the face set, so no age figures.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from facecrm.config import configure
from facecrm.eval import attributes as attribute_eval
from facecrm.vision.attributes import AttributeStage, expression_chip
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import build_pipeline

from common import faces_dir, link_model_cache, machine, smoke_faces

HERE = Path(__file__).resolve().parent
SUFFIXES = {".jpg", ".jpeg", ".png"}


def per_call_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best, median) ms of `repeat` calls: on a shared machine the best is the cost of the
    work, the median what other processes let it have."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times), float(np.median(times))


def link(src: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{src.parent.name}_{src.name}"
    if not target.exists():
        target.symlink_to(src)


def labelled_sets(faces: Path, root: Path) -> dict[str, Path]:
    """Folders in the `facecrm eval --attributes` layout, built from the face set."""
    sets: dict[str, Path] = {}
    expressions = faces / "more" / "expressions"
    if expressions.is_dir():
        for label in sorted(d for d in expressions.iterdir() if d.is_dir()):
            for photo in sorted(label.iterdir()):
                link(photo, root / "more_expressions" / "expression" / label.name)
        sets["more/expressions (smiling, neutral, negative)"] = root / "more_expressions"
    notes = faces / "more" / "labels.csv"
    if notes.is_file():
        for row in csv.DictReader(notes.open()):
            for label in ("smiling", "neutral"):
                photo = faces / "more" / row["path"]
                if f"expression: {label}" in row["notes"] and photo.is_file():
                    link(photo, root / "labels_csv" / "expression" / label)
        if (root / "labels_csv").is_dir():
            sets["more/labels.csv notes (smiling, neutral)"] = root / "labels_csv"
    genders = {r["identity"]: r["gender"] for r in csv.DictReader((HERE / "genders.csv").open())}
    photos = [*faces.glob("identities/*/*"), *faces.glob("more/identities/*/*")]
    for photo in sorted(photos):
        if photo.suffix.lower() in SUFFIXES:
            link(photo, root / "genders" / "gender" / genders[photo.parent.name])
    for photo in sorted(faces.glob("distractors/*")):
        if photo.suffix.lower() in SUFFIXES:
            link(photo, root / "genders" / "gender" / genders[photo.stem])
    sets["gender of every identity photo"] = root / "genders"
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tests/data, few repeats, seconds")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    args = parser.parse_args()
    repeat = 3 if args.smoke else 100
    cv2.setNumThreads(1)
    data_dir = Path(tempfile.mkdtemp(prefix="facecrm-bench-"))
    link_model_cache(data_dir, args.model_cache)
    settings = configure(data_dir=data_dir, threads=1)
    pipeline = build_pipeline(settings)
    stage = AttributeStage(settings.cache_dir, threads=1)
    faces = smoke_faces() if args.smoke else faces_dir()
    print(f"machine: {machine()}; one thread\n")

    image = read_image(faces / "scenes" / "multiface.jpg", settings)
    frame = cv2.resize(image, (640, 480))
    found = pipeline.faces(frame, embed=False)[:5]
    one = found[:1]
    grey = [expression_chip(frame, f) for f in found]
    small, large = stage.dlib_chips(frame, found)
    rows = {
        "expression chip (tight box, 64 px grey)": (
            per_call_ms(lambda: expression_chip(frame, one[0]), repeat),
            per_call_ms(lambda: [expression_chip(frame, f) for f in found], repeat),
        ),
        "expression model (mini-Xception, ONNX)": (
            per_call_ms(lambda: stage.expression_scores(grey[:1]), repeat),
            per_call_ms(lambda: stage.expression_scores(grey), repeat),
        ),
        "dlib 5-point + 32/64 px chips": (
            per_call_ms(lambda: stage.dlib_chips(frame, one), repeat),
            per_call_ms(lambda: stage.dlib_chips(frame, found), repeat),
        ),
        "gender model (32 px)": (
            per_call_ms(lambda: stage.gender_scores(small[:1]), repeat),
            per_call_ms(lambda: stage.gender_scores(small), repeat),
        ),
        "age model (64 px)": (
            per_call_ms(lambda: stage.age_years(large[:1]), repeat),
            per_call_ms(lambda: stage.age_years(large), repeat),
        ),
        "all (`AttributeStage.estimate`)": (
            per_call_ms(lambda: stage.estimate(frame, one), repeat),
            per_call_ms(lambda: stage.estimate(frame, found), repeat),
        ),
    }
    n = len(found)
    print(
        "| attribute step, 640x480 frame | ms per face, 1 face (best / median) "
        f"| ms per face, {n} faces in one call (best / median) |"
    )
    print("| --- | ---: | ---: |")
    for label, (single, batch) in rows.items():
        print(
            f"| {label} | {single[0]:.2f} / {single[1]:.2f} "
            f"| {batch[0] / n:.2f} / {batch[1] / n:.2f} |"
        )

    root = Path(tempfile.mkdtemp(prefix="facecrm-attr-sets-"))
    print("\n| set | task | photos | no face | accuracy | per class |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for title, folder in labelled_sets(faces, root).items():
        report = attribute_eval.evaluate(folder, pipeline, stage)
        for task in ("expression", "gender"):
            part = report.get(task)
            if not isinstance(part, dict):
                continue
            per_class = ", ".join(
                f"{label} {stats['correct']}/{stats['n']}"
                for label, stats in part["per_class"].items()
            )
            print(
                f"| {title} | {task} | {part['n']} | {part['no_face']} | "
                f"{100 * part['accuracy']:.0f}% | {per_class} |"
            )
            confusion = part["confusion"]
            matrix = zip(confusion["truth"], confusion["matrix"], strict=True)
            print(
                f"|  | confusion (truth: {', '.join(confusion['predicted'])}) | | | | "
                + "; ".join(f"{t}: {row}" for t, row in matrix)
                + " |"
            )


if __name__ == "__main__":
    main()
