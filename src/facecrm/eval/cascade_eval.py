"""`facecrm eval` for the two-stage cascade: its metrics, the hardest pairs, its calibration.

The cascade is evaluated with exactly the decision the product makes
(`facecrm.gallery.cascade.decide`, margin rule included), on the same images embedded
by both models; each single model is reported beside it by `runner.evaluate`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from facecrm.eval.metrics import Pair, Probe, identification, verification
from facecrm.eval.runner import Embedded, all_pairs, score
from facecrm.gallery.cascade import Accept, CascadeCalibration, decide, fit_cascade
from facecrm.gallery.threshold import Calibration


def _matrix(embedded: list[Embedded]) -> npt.NDArray[np.float32]:
    dim = next((len(e.template) for e in embedded if e.template is not None), 0)
    return np.stack(
        [np.full(dim, np.nan, np.float32) if e.template is None else e.template for e in embedded]
    )


def _dot(a: Embedded, b: Embedded) -> float:
    assert a.template is not None and b.template is not None
    return float(a.template @ b.template)


def _both_found(first: list[Embedded], second: list[Embedded]) -> list[int]:
    return [
        k
        for k, (a, b) in enumerate(zip(first, second, strict=True))
        if a.template is not None and b.template is not None
    ]


def cascade_score(
    cal: CascadeCalibration, a1: Embedded, b1: Embedded, a2: Embedded, b2: Embedded
) -> float | None:
    """g of one pair (photo a, photo b; stage 1 and 2 templates), None without a face."""
    s1, s2 = score(a1.template, b1.template), score(a2.template, b2.template)
    return None if s1 is None or s2 is None else cal.score(s1, s2)


def evaluate_cascade(
    first: list[Embedded], second: list[Embedded], cal: CascadeCalibration, fmr: float
) -> dict[str, object]:
    """Verification on g over all pairs and open-set identification with `decide`."""
    index = range(len(first))
    pairs = [
        Pair(
            cascade_score(cal, first[x], first[y], second[x], second[y]),
            first[x].sample.identity == first[y].sample.identity,
        )
        for x in index
        for y in index
        if x < y
    ]
    t = cal.threshold_z(fmr)
    t1, t2 = cal.thresholds(fmr)
    probes, reasons, runs = _open_set(first, second, cal, fmr)
    ident = identification(probes, 0.5)  # Probe scores are 1 (named) / 0 (unknown) here
    return {
        "rule": cal.rule,
        "threshold_z": t,
        "stage_thresholds": {cal.first.model_id: t1, cal.second.model_id: t2},
        "ambiguity_margin_z": cal.ambiguity_margin_z,
        "impostor_pairs_calibrated": cal.impostor_pairs,
        "verification": verification(pairs, t),
        "identification": {
            k: v for k, v in ident.items() if k not in {"fnir_at_fpir", "threshold"}
        },
        "unknown_reasons": reasons,
        "second_stage_runs": runs,
    }


def _open_set(
    first: list[Embedded], second: list[Embedded], cal: CascadeCalibration, fmr: float
) -> tuple[list[Probe], dict[str, int], dict[str, int]]:
    """The guide's protocol (even-position identities enrolled with their first image),
    each probe decided by the cascade; Probe.top_score is 1 when a name was given."""
    identities = sorted({e.sample.identity for e in first})
    enrolled_ids = set(identities[0::2])
    gallery: dict[str, int] = {}
    probes_at: list[int] = []
    for k, e in enumerate(first):
        first_of_enrolled = e.sample.identity in enrolled_ids and e.sample.identity not in gallery
        if first_of_enrolled and e.template is not None and second[k].template is not None:
            gallery[e.sample.identity] = k
            continue
        probes_at.append(k)
    probes, reasons = [], {"no_match": 0, "ambiguous": 0}
    runs = {"mated": 0, "non_mated": 0}
    for k in probes_at:
        mated = first[k].sample.identity in enrolled_ids
        if first[k].template is None or second[k].template is None or not gallery:
            probes.append(Probe(mated, None, False))
            continue
        d1 = {c: _dot(first[k], first[g]) for c, g in gallery.items()}
        ran: list[bool] = []

        def stage2(cands: Sequence[str], k: int = k, ran: list[bool] = ran) -> dict[str, float]:
            ran.append(True)
            return {c: _dot(second[k], second[gallery[c]]) for c in cands}

        decision = decide(d1, stage2, cal, fmr)
        runs["mated" if mated else "non_mated"] += bool(ran)
        if isinstance(decision, Accept):
            probes.append(Probe(mated, 1.0, decision.customer == first[k].sample.identity))
        else:
            reasons[decision.reason] += 1
            best = max(d1, key=d1.__getitem__)
            probes.append(Probe(mated, 0.0, best == first[k].sample.identity))
    return probes, reasons, runs


def hardest_pairs(
    first: list[Embedded],
    second: list[Embedded] | None,
    top: int,
    cal: CascadeCalibration | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The `top` highest-scoring impostor pairs and lowest-scoring genuine pairs, with
    file names and every model's score (ranked by the cascade's g when there is one)."""
    rows = []
    for x, y in itertools.combinations(range(len(first)), 2):
        a, b = first[x], first[y]
        s1 = score(a.template, b.template)
        if s1 is None:
            continue
        row: dict[str, Any] = {
            "file_x": a.sample.path,
            "file_y": b.sample.path,
            "genuine": a.sample.identity == b.sample.identity,
            "score": s1,
        }
        if second is not None and cal is not None:
            s2 = score(second[x].template, second[y].template)
            if s2 is None:
                continue
            row["second_score"] = s2
            row["cascade_z"] = cal.score(s1, s2)
        rows.append(row)
    key = "cascade_z" if cal is not None and second is not None else "score"
    impostors = sorted((r for r in rows if not r["genuine"]), key=lambda r: -r[key])
    genuine = sorted((r for r in rows if r["genuine"]), key=lambda r: r[key])
    return {"impostor": impostors[:top], "genuine": genuine[:top]}


def fit_from(
    first: list[Embedded], second: list[Embedded], model_ids: tuple[str, str], source: str
) -> CascadeCalibration:
    """`fit_cascade` on the photos where both models found a face."""
    keep = _both_found(first, second)
    return fit_cascade(
        [first[k].sample.identity for k in keep],
        _matrix([first[k] for k in keep]),
        _matrix([second[k] for k in keep]),
        model_ids,
        source,
    )


def save_calibration(
    first: list[Embedded],
    second: list[Embedded] | None,
    model_ids: tuple[str, str | None],
    target: Path,
    source: str,
) -> Path:
    """The first model's calibration, with the cascade section when `second` is given."""
    pairs = [
        (score(x.template, y.template), x.sample.identity == y.sample.identity)
        for x, y in all_pairs(first)
    ]
    scored = [(s, g) for s, g in pairs if s is not None]
    single = Calibration.fit(
        model_ids[0], [s for s, g in scored if not g], [s for s, g in scored if g], source=source
    )
    cascade = None
    if second is not None and model_ids[1] is not None:
        cascade = fit_from(first, second, (model_ids[0], model_ids[1]), source)
    single.save(target, cascade)
    return target


def plot_values(
    first: list[Embedded],
    second: list[Embedded] | None,
    cal: CascadeCalibration | None,
    fmr: float,
) -> tuple[list[float | None], list[bool], float] | None:
    """g and genuineness of every pair and the threshold, for the histogram; None
    without a cascade."""
    if second is None or cal is None:
        return None
    values, labels = [], []
    for x, y in itertools.combinations(range(len(first)), 2):
        values.append(cascade_score(cal, first[x], first[y], second[x], second[y]))
        labels.append(first[x].sample.identity == first[y].sample.identity)
    return values, labels, cal.threshold_z(fmr)
