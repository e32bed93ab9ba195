"""The dlib → SFace cascade against each model alone: accuracy and cost per face.

    python benchmarks/cascade_bench.py            # identities + more/identities + distractors
    python benchmarks/cascade_bench.py --smoke    # tests/data, in seconds (a test runs it)

Accuracy over all pairs of the set and the guide's open-set protocol (even-position
identities enrolled with their first photo), each scorer at its shipped operating point
(FMR 1e-3): dlib alone, SFace alone, and the cascade (both stages, margin rule).

Cost per face, one thread, after detection: what identification does with one face —
dlib chip + embedding + search, and for the cascade the SFace chip + embedding only when
the best dlib score reaches the first stage's threshold, then the decision. Strangers are
the non-mated probes, customers the mated ones.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from facecrm.config import Settings, configure
from facecrm.eval.cascade_eval import evaluate_cascade
from facecrm.eval.runner import Embedded, embed_set, evaluate, scan
from facecrm.gallery.cascade import decide
from facecrm.gallery.threshold import load_calibration, load_cascade
from facecrm.vision.image import read_image
from facecrm.vision.pipeline import build_pipeline

from common import faces_dir, identity_tree_with_distractors, link_model_cache, machine, smoke_faces

FMR = 1e-3
# "before": the shipped dlib threshold until issue 10, from 202 impostor pairs of
# identities + distractors (its largest impostor, 0.919952, + 1e-6)
BEFORE_THRESHOLD = 0.919953


def _settings(data_dir: Path, model_cache: Path | None, embedder: str) -> Settings:
    link_model_cache(data_dir, model_cache)
    return configure(data_dir=data_dir, embedder=embedder)


def accuracy_rows(
    root: Path, first: list[Embedded], second: list[Embedded]
) -> list[tuple[str, dict[str, object], dict[str, object]]]:
    """(scorer, verification, identification) for dlib, SFace and the cascade."""
    before = evaluate(first, "dlib-resnet-v1", BEFORE_THRESHOLD)
    rows = [("before: dlib alone at 0.920", before["verification"], before["identification"])]
    for model_id, embedded in (("dlib-resnet-v1", first), ("sface-2021dec", second)):
        threshold = load_calibration(model_id).threshold(FMR)
        report = evaluate(embedded, model_id, threshold)
        rows.append((f"{model_id} alone", report["verification"], report["identification"]))
    cascade = load_cascade("dlib-resnet-v1")
    assert cascade is not None, "the shipped calibration has no cascade section"
    report = evaluate_cascade(first, second, cascade, FMR)
    rows.append(
        ("cascade (dlib → SFace, margin)", report["verification"], report["identification"])
    )  # type: ignore[arg-type]
    return rows


def cost_per_face(root: Path, settings: Settings, second: Settings) -> dict[str, list[float]]:
    """ms per face after detection: dlib alone, and the cascade on strangers and customers."""
    dlib, sface = build_pipeline(settings), build_pipeline(second)
    cascade = load_cascade("dlib-resnet-v1")
    assert cascade is not None
    samples = scan(root)
    identities = sorted({s.identity for s in samples})
    enrolled = set(identities[0::2])
    gallery: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    probes = []
    for sample in samples:
        image = read_image(root / sample.path, settings)
        faces = dlib.faces(image, embed=False)
        if not faces:
            continue
        if sample.identity in enrolled and sample.identity not in gallery:
            t1 = dlib.embed([faces[0]])[0].template
            t2 = sface.embedder.embed([sface.aligner.align(image, faces[0])])[0]
            assert t1 is not None
            gallery[sample.identity] = (t1, t2)
        else:
            probes.append((sample.identity in enrolled, image, faces[0]))
    names = list(gallery)
    g1 = np.stack([gallery[n][0] for n in names])
    g2 = np.stack([gallery[n][1] for n in names])
    out: dict[str, list[float]] = {"dlib": [], "strangers": [], "customers": [], "ran": []}
    for _ in range(3):  # repeat: the set is small
        for mated, image, face in probes:
            start = time.perf_counter()
            chip = dlib.aligner.align(image, face)
            template = dlib.embedder.embed([chip])[0]
            first = dict(zip(names, (g1 @ template).tolist(), strict=True))
            out["dlib"].append((time.perf_counter() - start) * 1000)
            ran: list[bool] = []

            def stage2(cands, image=image, face=face, ran=ran):  # type: ignore[no-untyped-def]
                ran.append(True)
                probe = sface.embedder.embed([sface.aligner.align(image, face)])[0]
                return {c: float(g2[names.index(c)] @ probe) for c in cands}

            decide(first, stage2, cascade, FMR)
            out["customers" if mated else "strangers"].append((time.perf_counter() - start) * 1000)
            if not mated:
                out["ran"].append(float(bool(ran)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tests/data only, one pass")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    args = parser.parse_args()
    faces = smoke_faces() if args.smoke else faces_dir()
    root = identity_tree_with_distractors(faces, more=not args.smoke)
    data_dir = Path(tempfile.mkdtemp(prefix="facecrm-cascade-bench-"))
    first_settings = _settings(data_dir, args.model_cache, "dlib")
    second_settings = _settings(data_dir, args.model_cache, "sface")
    first, _ = embed_set(root, first_settings, workers=1)
    second, _ = embed_set(root, second_settings, workers=1)
    print(f"machine: {machine()}\n")
    print(
        f"set: {faces} ({len(first)} photos, {len({e.sample.identity for e in first})} "
        "identities, distractors as identities)\n"
    )
    print(
        "| scorer | pairs (gen/imp) | accuracy | genuine accepted | impostor accepted "
        "| TAR @ FAR 1e-3 | FNIR at op. point | FPIR at op. point |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, v, i in accuracy_rows(root, first, second):
        tar = v["tar_at_far"].get("0.001")  # type: ignore[union-attr]
        print(
            f"| {name} | {v['genuine_pairs']}/{v['impostor_pairs']} | {v['accuracy']:.4f} "
            f"| {v['genuine_accepted']} | {v['impostor_accepted']} "
            f"| {'n/a' if tar is None else f'{tar:.4f}'} "
            f"| {i['fnir']:.3f} ({i['mated_probes']}) | {i['fpir']:.3f} ({i['non_mated_probes']}) |"
        )
    cost = cost_per_face(root, first_settings, second_settings)
    print("\n| path, per face after detection (one thread) | mean ms | p50 ms | faces |")
    print("| --- | ---: | ---: | ---: |")
    for key, label in (
        ("dlib", "dlib alone (align, embed, search)"),
        ("strangers", "cascade, strangers (non-mated probes)"),
        ("customers", "cascade, customers (mated probes)"),
    ):
        values = cost[key]
        print(
            f"| {label} | {statistics.fmean(values):.2f} | {statistics.median(values):.2f} "
            f"| {len(values)} |"
        )
    share = statistics.fmean(cost["ran"]) if cost["ran"] else 0.0
    print(f"\nstrangers for whom SFace ran: {share:.1%}")
    if args.smoke and not cost["customers"]:
        raise SystemExit("FAILED: no customer probe was timed")


if __name__ == "__main__":
    main()
