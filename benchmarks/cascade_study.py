"""Score study for the dlib ResNet → SFace cascade (issue 10), and its calibration.

    python benchmarks/cascade_study.py                       # report (embeddings cached)
    python benchmarks/cascade_study.py --write               # also ship the calibration
    python benchmarks/cascade_study.py --fp32-model PATH/face_recognition_sface_2021dec.onnx
    python benchmarks/cascade_study.py --smoke              # tests/data, no cache, seconds

The set is every identity of `faces/identities` and `faces/more/identities` plus each
distractor as an identity of its own (86 photos, 3,655 pairs). Each photo is detected
once (YuNet, largest face) and embedded by every variant on the same detection:

* `dlib`: dlib's ResNet in onnxruntime (the default embedder) on dlib's 150 px chip;
* `sface`: SFace with the shipped int8 weights folded to float32, in onnxruntime
  (`facecrm.vision.embed.sface_onnx`) on the 112 px five-point chip;
* `sface_cv`: the same int8 file run by OpenCV's FaceRecognizerSF (the old path);
* `sface_fp32`: an original fp32 SFace file, when `--fp32-model` gives one.

Embeddings are cached in an .npz (`--cache`), so the analysis reruns in a second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import onnx

from facecrm.config import Settings
from facecrm.eval.runner import scan
from facecrm.gallery.cascade import CascadeCalibration, decide, fit_cascade, pair_scores
from facecrm.gallery.threshold import Calibration
from facecrm.vision.align import DlibAligner, FivePointAligner
from facecrm.vision.detect import YuNetDetector
from facecrm.vision.embed import OnnxEmbedder, SFaceEmbedder, dlib_resnet_onnx, sface_onnx
from facecrm.vision.image import read_image

from common import faces_dir, identity_tree_with_distractors, machine, smoke_faces

VARIANTS = ("dlib", "sface", "sface_cv", "sface_fp32")


def _plain_fp32(source: Path, target: Path) -> None:
    """An fp32 SFace whose weights are declared as graph inputs, rewritten as constants
    (onnxruntime cannot fold batch norms into weights that a caller could override)."""
    model = onnx.load(str(source))
    names = {i.name for i in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    onnx.save(model, str(target))


def embed_set(root: Path, cache_dir: Path, fp32_model: Path | None) -> dict[str, np.ndarray]:
    """Every variant's template of the largest face of each photo, and ms per face."""
    detector = YuNetDetector(cache_dir, 640, 0.6)
    dlib_aligner, five = DlibAligner(), FivePointAligner(112)
    embedders: dict[str, object] = {
        "dlib": dlib_resnet_onnx(cache_dir),
        "sface": sface_onnx(cache_dir),
        "sface_cv": SFaceEmbedder(),
    }
    if fp32_model is not None:
        plain = cache_dir / "sface_fp32_plain.onnx"
        _plain_fp32(fp32_model, plain)
        embedders["sface_fp32"] = OnnxEmbedder(plain, 112, 0.0, 1.0, model_id="sface-fp32")
    samples = scan(root)
    out: dict[str, list[np.ndarray]] = {k: [] for k in embedders}
    ms: dict[str, list[float]] = {k: [] for k in embedders}
    found = []
    for sample in samples:
        image = read_image(root / sample.path, Settings(data_dir=cache_dir))
        faces = detector.detect(image)
        found.append(bool(faces))
        for name, embedder in embedders.items():
            if not faces:
                out[name].append(np.full(128, np.nan, dtype=np.float32))
                continue
            aligner = dlib_aligner if name == "dlib" else five
            chip = aligner.align(image, faces[0])
            start = time.perf_counter()
            vector = embedder.embed([chip])[0]  # type: ignore[attr-defined]
            ms[name].append((time.perf_counter() - start) * 1000)
            out[name].append(vector)
    result = {k: np.stack(v) for k, v in out.items()}
    result.update({f"ms_{k}": np.array(v) for k, v in ms.items()})
    result["paths"] = np.array([s.path for s in samples])
    result["identities"] = np.array([s.identity for s in samples])
    result["found"] = np.array(found)
    return result


def load_or_embed(
    cache: Path, fp32_model: Path | None, smoke: bool = False, model_cache: Path | None = None
) -> dict[str, np.ndarray]:
    if cache.is_file() and not smoke:
        with np.load(cache) as data:
            return {k: data[k] for k in data.files}
    faces = smoke_faces() if smoke else faces_dir()
    root = identity_tree_with_distractors(faces, more=not smoke)
    cache_dir = cache.parent / "facecrm-cascade-models"
    if model_cache is not None:  # cached_model() looks in cache_dir/models
        cache_dir = Path(tempfile.mkdtemp(prefix="facecrm-cascade-models-"))
        model_cache.mkdir(parents=True, exist_ok=True)
        (cache_dir / "models").symlink_to(model_cache.resolve(), target_is_directory=True)
    data = embed_set(root, cache_dir, fp32_model)
    if not smoke:  # the smoke set must never stand in for the full set's cached embeddings
        np.savez(cache, **data)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/facecrm-cascade-embeddings.npz"))
    parser.add_argument("--fp32-model", type=Path, default=None)
    parser.add_argument("--write", action="store_true", help="write the shipped calibration")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tests/data, no cache, no --write")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    args = parser.parse_args()
    if args.smoke and args.write:
        parser.error("--smoke cannot --write: the shipped calibration comes from the full set")
    data = load_or_embed(args.cache, args.fp32_model, args.smoke, args.model_cache)
    print(f"machine: {machine()}\n")
    paths, identities = list(data["paths"]), list(data["identities"])
    print(
        f"{len(paths)} photos, {len(set(identities))} identities, faces found {data['found'].sum()}"
    )
    for name in VARIANTS:
        if f"ms_{name}" in data:
            print(f"  {name}: {np.mean(data[f'ms_{name}']):.2f} ms/face (batch 1, one thread)")
    i, j = np.triu_indices(len(paths), 1)
    genuine = np.array(identities)[i] == np.array(identities)[j]
    scores = {
        name: np.einsum("ij,ij->i", data[name][i], data[name][j])
        for name in VARIANTS
        if name in data
    }
    if "sface_cv" in scores:
        print(
            "sface (onnxruntime) against OpenCV: largest score difference "
            f"{np.abs(scores['sface'] - scores['sface_cv']).max():.1e}"
        )
    source = (
        "tests/data identities + distractors (smoke)"
        if args.smoke
        else "../shared/faces identities + more/identities + distractors"
    )
    cascade = fit_cascade(
        identities, data["dlib"], data["sface"], ("dlib-resnet-v1", "sface-2021dec"), source
    )
    scores["cascade"] = pair_scores(data["dlib"], data["sface"], cascade)
    singles = {
        name: Calibration.fit(name, scores[name][~genuine], scores[name][genuine], source)
        for name in VARIANTS
        if name in scores
    }
    print(f"\n{genuine.sum()} genuine / {(~genuine).sum()} impostor pairs\n")
    print(
        "| scorer | impostor mean / sd / max | threshold @ FMR 1e-3 | impostor pairs behind it "
        "| genuine accepted | impostor accepted | accuracy | TAR @ FAR 1e-3 |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, values in scores.items():
        imp = values[~genuine]
        if name == "cascade":
            t = cascade.threshold_z(1e-3)
            t1, t2 = cascade.thresholds(1e-3)
            label = f"z {t:.3f} (dlib {t1:.3f}, sface {t2:.3f})"
        else:
            t = singles[name].threshold(1e-3)
            label = f"{t:.3f}"
        print(
            f"| {name} | {imp.mean():.3f} / {imp.std(ddof=1):.3f} / {imp.max():.3f} | {label} "
            f"| {imp.size} | {np.mean(values[genuine] >= t):.4f} | {int(np.sum(imp >= t))} "
            f"| {np.mean((values >= t) == genuine):.4f} | {_tar_at_far(values, genuine):.4f} |"
        )
    print(f"\ncascade: {cascade}")
    print(
        f"  model threshold (bivariate normal, rho {cascade.rho:.3f}) z "
        f"{_model_z(cascade):.3f}; floor (largest "
        f"impostor g) {cascade.impostor_max_z:.3f}"
    )
    _hardest(paths, i, j, genuine, scores, args.top)
    _skip_study(data, identities, cascade)
    if args.write:
        target = Path(str(resources.files("facecrm.vision") / "calibration"))
        for name, model_id in (("dlib", "dlib-resnet-v1"), ("sface", "sface-2021dec")):
            fitted = Calibration(**{**_asdict(singles[name]), "model_id": model_id})
            fitted.save(target / f"{model_id}.json", cascade if name == "dlib" else None)
        print(f"\nwritten to {target}")


def _asdict(c: Calibration) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(c)


def _model_z(cascade: CascadeCalibration) -> float:
    from facecrm.gallery.cascade import _joint_tail_z

    return _joint_tail_z(1e-3, cascade.rho)


def _tar_at_far(values: np.ndarray, genuine: np.ndarray, far: float = 1e-3) -> float:
    imp = np.sort(values[~genuine])[::-1]
    allowed = int(np.floor(far * imp.size + 1e-9))
    return float(np.mean(values[genuine] > imp[allowed]))


def _hardest(paths, i, j, genuine, scores, top) -> None:  # type: ignore[no-untyped-def]
    for title, mask, order in (
        ("hardest impostor pairs (by dlib)", ~genuine, -scores["dlib"]),
        ("hardest impostor pairs (by sface)", ~genuine, -scores["sface"]),
        ("hardest impostor pairs (by cascade g)", ~genuine, -scores["cascade"]),
        ("hardest genuine pairs (by dlib)", genuine, scores["dlib"]),
        ("hardest genuine pairs (by sface)", genuine, scores["sface"]),
        ("hardest genuine pairs (by cascade g)", genuine, scores["cascade"]),
    ):
        print(f"\n{title}\n\n| photo | photo | dlib | sface | cascade g |")
        print("| --- | --- | ---: | ---: | ---: |")
        idx = np.flatnonzero(mask)
        for q in idx[np.argsort(order[idx], kind="stable")][:top]:
            print(
                f"| {paths[i[q]]} | {paths[j[q]]} | {scores['dlib'][q]:.3f} "
                f"| {scores['sface'][q]:.3f} | {scores['cascade'][q]:.2f} |"
            )


def _skip_study(data, identities, cascade: CascadeCalibration) -> None:  # type: ignore[no-untyped-def]
    """Open-set identification with the cascade and with each model alone (the guide's
    protocol), and how often the second stage runs."""
    ids = np.array(identities)
    names = sorted(set(identities))
    enrolled = set(names[0::2])
    first: dict[str, int] = {}
    for k, name in enumerate(ids):
        if name in enrolled:
            first.setdefault(str(name), k)
    probes = [k for k in range(len(ids)) if k not in first.values()]
    t1, _ = cascade.thresholds(1e-3)
    rows = {"dlib alone": [0, 0], "sface alone": [0, 0], "cascade": [0, 0]}
    runs = {True: 0, False: 0}
    reasons: dict[str, int] = {}
    mated = sum(ids[k] in enrolled for k in probes)
    for k in probes:
        d1 = {c: float(data["dlib"][k] @ data["dlib"][g]) for c, g in first.items()}
        s1 = {c: float(data["sface"][k] @ data["sface"][g]) for c, g in first.items()}
        called: list[bool] = []

        def second(cands, s1=s1, called=called):  # type: ignore[no-untyped-def]
            called.append(True)
            return {c: s1[c] for c in cands}

        decision = decide(d1, second, cascade, 1e-3)
        is_mated = ids[k] in enrolled
        runs[is_mated] += bool(called)
        who = getattr(decision, "customer", None)
        if who is None:
            reasons[decision.reason] = reasons.get(decision.reason, 0) + 1  # type: ignore[union-attr]
        for name, pick in (
            ("dlib alone", max(d1, key=d1.__getitem__) if max(d1.values()) >= 0.940 else None),
            ("sface alone", max(s1, key=s1.__getitem__) if max(s1.values()) >= 0.486 else None),
            ("cascade", who),
        ):
            if is_mated:
                rows[name][0] += pick != ids[k]
            else:
                rows[name][1] += pick is not None
    print(
        f"\nopen-set identification: {len(first)} enrolled (first photo), {mated} mated and "
        f"{len(probes) - mated} non-mated probes; cascade unknowns by reason {reasons}"
    )
    print("\n| scorer | FNIR | FPIR |\n| --- | ---: | ---: |")
    for name, (fn, fp) in rows.items():
        print(
            f"| {name} | {fn}/{mated} = {fn / mated:.3f} | {fp}/{len(probes) - mated} = "
            f"{fp / (len(probes) - mated):.3f} |"
        )
    print(
        f"\nsecond stage run for {runs[False]}/{len(probes) - mated} non-mated and "
        f"{runs[True]}/{mated} mated probes (skipped below dlib {t1:.3f}; candidates from "
        f"{cascade.candidate_floor(1e-3):.3f})"
    )


if __name__ == "__main__":
    main()
