"""Two-embedder cascade: a fast first stage, a second opinion, and the margin rule.

A face is given a customer's name only when **both** embedders agree: each score is
turned into its impostor z-score (how many impostor standard deviations above the
impostor mean of *its own* model) and the decision score is the smaller of the two,

    g = min((s1 - mean1) / std1, (s2 - mean2) / std2),

accepted when g reaches one threshold `T`. That is rule (a) "each above its own
threshold" (t_i = mean_i + T * std_i) written as one score, so it is calibrated as one:
`T` is set for the target false-match rate from a bivariate normal model of the two
impostor z-scores (their correlation measured), and is never below the largest g of
any impostor pair seen in calibration.

Because g <= z1, a face whose best first-stage score is below the first stage's own
threshold can never be accepted: the second embedder is not run for it (strangers far
from everyone cost one embedding). Candidates within the ambiguity margin below that
threshold are still scored by the second stage when it runs, so the margin rule sees
them.

Margin rule (1:N): the best accepted customer must beat the second-best *different*
customer by `ambiguity_margin_z` (in g units), else the answer is unknown with reason
`ambiguous` — relatives and look-alikes can both be customers.

The module is pure: scores in, a decision out; embedders and galleries stay outside.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt

CASCADE_VERSION = 1
RULE = "min_z"
MIN_AMBIGUITY_MARGIN_Z = 0.25  # used when calibration saw no wrong customer on top
# How far above the highest impostor seen a single model's threshold sits (in impostor
# standard deviations): the same pair re-embedded in another process or batch moves by
# ~1e-6, and a floor at exactly that pair's score named Kate Siegel as Angelina Jolie once
# served. (dlib alone cannot afford more: 0.25 would cost 15 of the calibration set's 127
# genuine pairs; it is the fallback for templates enrolled before the cascade.)
FLOOR_MARGIN_Z = 0.01
# The cascade's floor sits further above its highest impostor g: by the noise of g under
# the pipeline's own preprocessing, not by float noise. The same photos through another
# detector resampler or JPEG decoder scale move impostor pairs' g by 0.05-0.07 (one
# standard deviation; 99th percentile 0.23-0.31), and the highest pair (Kate Siegel ~
# Angelina Jolie) by up to 0.041 between two resamplers, past a floor 0.01 above it
# (`python benchmarks/preprocessing_noise.py`, table in benchmarks/README.md). 0.15 is
# over two such deviations and over three times that pair's move; it is the largest margin that
# misses no returning customer of the calibration set in leave-one-out (0.2 misses one,
# 0.25 three) and it keeps 116 of 127 genuine pairs above the threshold, as 0.01 did.
# (Re-encoding a photo moves g more, sd 0.15: that is photo-to-photo variation, which the
# impostor model behind the false-match rate is fitted on, not a floor's job.)
CASCADE_FLOOR_MARGIN_Z = 0.15

K = TypeVar("K", bound=Hashable)
Reason = Literal["no_match", "ambiguous"]


@dataclass(frozen=True, slots=True)
class StageStats:
    """Impostor-score statistics of one embedder (cosine similarities)."""

    model_id: str
    impostor_mean: float
    impostor_std: float

    def z(self, score: float) -> float:
        return (score - self.impostor_mean) / self.impostor_std

    def score_at(self, z: float) -> float:
        return self.impostor_mean + z * self.impostor_std


@dataclass(frozen=True, slots=True)
class CascadeCalibration:
    """What the cascade needs, fitted by `fit_cascade` (the `cascade` section of a
    calibration JSON)."""

    first: StageStats
    second: StageStats
    rho: float  # correlation of the two impostor z-scores
    impostor_max_z: float  # largest g of any impostor pair seen
    ambiguity_margin_z: float
    impostor_pairs: int
    genuine_pairs: int = 0
    smallest_correct_gap_z: float | None = None  # for the report: margin headroom
    source: str = ""
    version: int = CASCADE_VERSION
    rule: str = RULE

    def threshold_z(self, fmr: float, margin_z: float = CASCADE_FLOOR_MARGIN_Z) -> float:
        """g at or above which a pair is accepted, for joint false-match rate `fmr`
        (`margin_z` other than the shipped one: for measuring what a margin costs)."""
        return max(_joint_tail_z(fmr, self.rho), self.impostor_max_z + margin_z)

    def thresholds(self, fmr: float) -> tuple[float, float]:
        """Each stage's own similarity threshold (both must be reached)."""
        t = self.threshold_z(fmr)
        return self.first.score_at(t), self.second.score_at(t)

    def skip_below(self, fmr: float) -> float:
        """First-stage score under which the second stage is not run: nothing below the
        first stage's own threshold can be accepted (g <= z1)."""
        return self.first.score_at(self.threshold_z(fmr))

    def candidate_floor(self, fmr: float) -> float:
        """First-stage score from which a customer is scored by the second stage when it
        runs: within the ambiguity margin of the threshold (for the margin rule)."""
        return self.first.score_at(self.threshold_z(fmr) - self.ambiguity_margin_z)

    def score(self, first: float, second: float) -> float:
        """The decision score g of one pair."""
        return min(self.first.z(first), self.second.z(second))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CascadeCalibration:
        version = data.get("version")
        if version != CASCADE_VERSION or data.get("rule") != RULE:
            raise ValueError(
                f"cascade calibration version {version!r} / rule {data.get('rule')!r} "
                f"is not supported (expected {CASCADE_VERSION} / {RULE!r})"
            )
        fields = dict(data)
        fields["first"] = StageStats(**data["first"])
        fields["second"] = StageStats(**data["second"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Accept(Generic[K]):
    """A customer both stages agree on, clearly ahead of every other customer."""

    customer: K
    first: float
    second: float
    score_z: float
    margin_z: float  # ahead of the second-best different customer (inf: none near)


@dataclass(frozen=True, slots=True)
class Unknown:
    """No name: nobody passed both stages (`no_match`), or two customers were too
    close to tell apart (`ambiguous`). `second_stage_run` is False when the first
    stage alone ruled everyone out."""

    reason: Reason
    second_stage_run: bool


def decide(
    first_scores: Mapping[K, float],
    second_scores: Callable[[Sequence[K]], Mapping[K, float]],
    calibration: CascadeCalibration,
    fmr: float,
    single_threshold: float | None = None,
) -> Accept[K] | Unknown:
    """One face against the gallery.

    `first_scores`: the best first-stage similarity per customer (at least the
    customers near the top; customers left out count as far away).
    `second_scores(candidates)`: the best second-stage similarity of the face to each
    candidate customer that has second-stage templates; called at most once, and only
    when someone could be accepted.

    A candidate missing from `second_scores` (enrolled before the cascade, no
    second-stage template) is left out unless `single_threshold` is given: then it is
    decided by the first stage alone at that threshold (the first model's own
    single-model calibration, never the lower stage threshold), and it still counts
    for the margin rule with its first-stage z (an upper bound of its g).
    """
    t = calibration.threshold_z(fmr)
    skip_below = calibration.first.score_at(t)
    if not first_scores or max(first_scores.values()) < skip_below:
        return Unknown("no_match", second_stage_run=False)
    floor = calibration.first.score_at(t - calibration.ambiguity_margin_z)
    candidates = [k for k, s in first_scores.items() if s >= floor]
    second = second_scores(candidates)
    scored: list[tuple[float, K, bool]] = []  # (g, customer, may be accepted)
    for k in candidates:
        if k in second:
            scored.append((calibration.score(first_scores[k], second[k]), k, True))
        elif single_threshold is not None:
            z = calibration.first.z(first_scores[k])
            scored.append((z, k, first_scores[k] >= max(single_threshold, skip_below)))
    scored.sort(key=lambda item: item[0], reverse=True)
    if not scored or scored[0][0] < t or not scored[0][2]:
        return Unknown("no_match", second_stage_run=True)
    best_z, best, _ = scored[0]
    margin = best_z - scored[1][0] if len(scored) > 1 else math.inf
    if margin < calibration.ambiguity_margin_z:
        return Unknown("ambiguous", second_stage_run=True)
    return Accept(best, first_scores[best], second.get(best, math.nan), best_z, margin)


def _joint_tail(z: float, rho: float) -> float:
    """P(Z1 >= z and Z2 >= z) for standard normals with correlation `rho`."""
    normal = NormalDist()
    x = np.linspace(z, z + 12.0, 2001)
    density = np.exp(-(x**2) / 2) / math.sqrt(2 * math.pi)
    scale = math.sqrt(max(1.0 - rho * rho, 1e-12))
    inner = np.array([1.0 - normal.cdf((z - rho * v) / scale) for v in x])
    return float(np.trapezoid(density * inner, x))


@functools.lru_cache(maxsize=64)
def _joint_tail_z(fmr: float, rho: float) -> float:
    """The common z both stages must reach for a modelled joint false-match rate `fmr`
    (cached: a bisection over a numerical integral costs ~0.1 s, a decision microseconds)."""
    if not 0.0 < fmr < 1.0:
        raise ValueError("the target false-match rate must be between 0 and 1")
    lo, hi = -8.0, 12.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _joint_tail(mid, rho) > fmr else (lo, mid)
    return hi


def _stats(model_id: str, scores: npt.NDArray[np.float64]) -> StageStats:
    return StageStats(model_id, float(scores.mean()), float(scores.std(ddof=1)))


def fit_cascade(
    identities: Sequence[str],
    first: npt.NDArray[np.floating[Any]],
    second: npt.NDArray[np.floating[Any]],
    model_ids: tuple[str, str],
    source: str = "",
) -> CascadeCalibration:
    """Calibrate on labelled templates (row i of both matrices is photo i of `identities[i]`).

    Every pair of photos is scored; impostor pairs give each stage's statistics, their
    correlation and the largest impostor g. The ambiguity margin comes from
    leave-one-out identification over the same photos (every identity enrolled with all
    its other photos): the largest lead a *wrong* customer ever had over the probe's own
    (so each such case seen would have been called ambiguous), at least
    `MIN_AMBIGUITY_MARGIN_Z`.
    """
    ids = np.asarray(identities)
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    i, j = np.triu_indices(len(ids), 1)
    genuine = ids[i] == ids[j]
    s1, s2 = (a @ a.T)[i, j], (b @ b.T)[i, j]
    if (~genuine).sum() < 2:
        raise ValueError("calibration needs at least two impostor pairs")
    st1, st2 = _stats(model_ids[0], s1[~genuine]), _stats(model_ids[1], s2[~genuine])
    z1 = (a @ a.T - st1.impostor_mean) / st1.impostor_std
    z2 = (b @ b.T - st2.impostor_mean) / st2.impostor_std
    g = np.minimum(z1, z2)
    rho = float(np.corrcoef(z1[i, j][~genuine], z2[i, j][~genuine])[0, 1])
    impostor_max = float(g[i, j][~genuine].max())
    wrong_leads, correct_gaps = _leave_one_out(ids, g)
    margin = max([MIN_AMBIGUITY_MARGIN_Z, *(lead + 1e-6 for lead in wrong_leads)])
    return CascadeCalibration(
        first=st1,
        second=st2,
        rho=rho,
        impostor_max_z=impostor_max,
        ambiguity_margin_z=float(margin),
        impostor_pairs=int((~genuine).sum()),
        genuine_pairs=int(genuine.sum()),
        smallest_correct_gap_z=min(correct_gaps) if correct_gaps else None,
        source=source,
    )


def _leave_one_out(
    ids: npt.NDArray[Any], g: npt.NDArray[np.float64]
) -> tuple[list[float], list[float]]:
    """Per probe photo, with every identity's other photos enrolled: the leads of wrong
    customers ranked first over the own one, and the gaps of correct firsts to the next."""
    members = {name: np.flatnonzero(ids == name) for name in dict.fromkeys(ids.tolist())}
    wrong, correct = [], []
    for probe, own in enumerate(ids):
        if len(members[own]) < 2:
            continue
        best = {
            name: float(g[probe, [m for m in rows if m != probe]].max())
            for name, rows in members.items()
            if any(m != probe for m in rows)
        }
        ranked = sorted(best.items(), key=lambda item: item[1], reverse=True)
        if ranked[0][0] != own:
            wrong.append(ranked[0][1] - best[own])
        elif len(ranked) > 1:
            correct.append(ranked[0][1] - ranked[1][1])
    return wrong, correct


def pair_scores(
    first: npt.NDArray[np.floating[Any]],
    second: npt.NDArray[np.floating[Any]],
    calibration: CascadeCalibration,
) -> npt.NDArray[np.float64]:
    """g for every pair (i < j) of rows, in `itertools.combinations` order."""
    i, j = np.triu_indices(len(first), 1)
    s1 = np.einsum("ij,ij->i", first[i], first[j])
    s2 = np.einsum("ij,ij->i", second[i], second[j])
    z1 = (s1 - calibration.first.impostor_mean) / calibration.first.impostor_std
    z2 = (s2 - calibration.second.impostor_mean) / calibration.second.impostor_std
    return np.asarray(np.minimum(z1, z2), dtype=np.float64)
