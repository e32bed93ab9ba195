"""Verification and open-set identification metrics, as defined in the guide.

* Verification: a pair is accepted when its score reaches the threshold; a
  pair with a missing face (score None) is never accepted.
* TAR@FAR=x: genuine acceptance at the lowest threshold whose impostor
  acceptance is <= x; None when there are fewer than 1/x impostor pairs.
* Open-set identification: FPIR = share of non-mated probes returned as
  anyone; FNIR = share of mated probes not returned as their own identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FARS = (1e-2, 1e-3)
FPIRS = (1e-2, 1e-3)


@dataclass(frozen=True, slots=True)
class Pair:
    score: float | None  # None: a face was not found in one of the images
    genuine: bool


def _arrays(pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array([-np.inf if p.score is None else p.score for p in pairs], dtype=np.float64)
    genuine = np.array([p.genuine for p in pairs], dtype=bool)
    return scores, genuine


def verification(pairs: Sequence[Pair], threshold: float) -> dict[str, object]:
    """Accuracy at `threshold`, best accuracy over all thresholds, TAR at fixed FARs."""
    scores, genuine = _arrays(pairs)
    n = len(pairs)
    if n == 0:
        return {"pairs": 0, "accuracy": None, "best_accuracy": None, "tar_at_far": {}}
    accepted = scores >= threshold
    accuracy = float(np.mean(accepted == genuine))
    finite = np.unique(scores[np.isfinite(scores)])
    candidates = np.concatenate([finite, [np.inf]])
    best = max(float(np.mean((scores >= t) == genuine)) for t in candidates)
    impostor = scores[~genuine]
    tar: dict[str, float | None] = {}
    for far in FARS:
        key = f"{far:g}"
        if len(impostor) < 1 / far or not genuine.any():
            tar[key] = None
            continue
        t = _threshold_for_rate(impostor, far)
        tar[key] = float(np.mean(scores[genuine] >= t))
    return {
        "pairs": n,
        "genuine_pairs": int(genuine.sum()),
        "impostor_pairs": int((~genuine).sum()),
        "threshold": threshold,
        "genuine_accepted": int((accepted & genuine).sum()),
        "impostor_accepted": int((accepted & ~genuine).sum()),
        "accuracy": accuracy,
        "best_accuracy": best,
        "tar_at_far": tar,
    }


def _threshold_for_rate(negatives: np.ndarray, rate: float) -> float:
    """The lowest threshold at which at most `rate` of `negatives` reach it."""
    finite = np.sort(negatives[np.isfinite(negatives)])[::-1]
    allowed = int(np.floor(rate * len(negatives) + 1e-9))
    if allowed >= len(finite):
        return -np.inf
    # accept strictly above the (allowed+1)-th highest negative
    return float(np.nextafter(finite[allowed], np.inf))


@dataclass(frozen=True, slots=True)
class Probe:
    """One identification search: the best candidate and whether it is the truth."""

    mated: bool
    top_score: float | None  # None: no face found, or an empty gallery
    top_correct: bool


def identification(probes: Sequence[Probe], threshold: float) -> dict[str, object]:
    """Rank-1, FNIR at FPIR <= 1% and 0.1%, and FPIR/FNIR at `threshold`."""
    mated = [p for p in probes if p.mated]
    non_mated = [p for p in probes if not p.mated]

    def score(p: Probe) -> float:
        return -np.inf if p.top_score is None else p.top_score

    neg = np.array([score(p) for p in non_mated], dtype=np.float64)
    pos = np.array([score(p) for p in mated], dtype=np.float64)
    correct = np.array([p.top_correct for p in mated], dtype=bool)

    def fnir(t: float) -> float | None:
        return float(np.mean(~(correct & (pos >= t)))) if len(mated) else None

    def fpir(t: float) -> float | None:
        return float(np.mean(neg >= t)) if len(non_mated) else None

    at_fpir: dict[str, float | None] = {}
    for rate in FPIRS:
        at_fpir[f"{rate:g}"] = fnir(_threshold_for_rate(neg, rate)) if len(non_mated) else None
    return {
        "mated_probes": len(mated),
        "non_mated_probes": len(non_mated),
        "rank1": float(np.mean(correct & np.isfinite(pos))) if len(mated) else None,
        "fnir_at_fpir": at_fpir,
        "threshold": threshold,
        "fnir": fnir(threshold),
        "fpir": fpir(threshold),
    }
