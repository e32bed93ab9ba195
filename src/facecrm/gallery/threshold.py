"""Operating thresholds derived from a target false-match rate.

A calibration records, for one embedder, the distribution of similarities
between *different* people (impostor pairs). The threshold for a target
false-match rate (FMR) is the point that impostor scores exceed with
probability FMR. With few impostor pairs the empirical quantile is
meaningless at small FMR, so the tail is modelled as a normal distribution
fitted to the impostor scores; the threshold is never below the largest
impostor score observed (an impostor seen in calibration is never accepted).

Calibrations ship in `facecrm/vision/calibration/<model_id>.json` and can be
recomputed on an operator's own labelled photos with `facecrm eval DIR
--calibrate`, which writes `<data_dir>/calibration/<model_id>.json` and takes
precedence; `FACECRM_CALIBRATION=path` names such a file explicitly. The first
stage's file may carry a versioned `cascade` section (see `gallery.cascade`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from facecrm.gallery.cascade import FLOOR_MARGIN_Z, CascadeCalibration


@dataclass(frozen=True, slots=True)
class Calibration:
    """Impostor-score statistics of one embedder."""

    model_id: str
    impostor_mean: float
    impostor_std: float
    impostor_max: float
    impostor_pairs: int
    genuine_mean: float | None = None
    genuine_pairs: int = 0
    source: str = ""

    @classmethod
    def fit(
        cls,
        model_id: str,
        impostor: npt.ArrayLike,
        genuine: npt.ArrayLike = (),
        source: str = "",
    ) -> Calibration:
        imp = np.asarray(impostor, dtype=np.float64)
        gen = np.asarray(genuine, dtype=np.float64)
        if imp.size < 2:
            raise ValueError("calibration needs at least two impostor pairs")
        return cls(
            model_id=model_id,
            impostor_mean=float(imp.mean()),
            impostor_std=float(imp.std(ddof=1)),
            impostor_max=float(imp.max()),
            impostor_pairs=int(imp.size),
            genuine_mean=float(gen.mean()) if gen.size else None,
            genuine_pairs=int(gen.size),
            source=source,
        )

    def threshold(self, fmr: float, margin_z: float = FLOOR_MARGIN_Z) -> float:
        """Similarity at or above which a pair is accepted, for false-match rate `fmr`
        (`margin_z` other than the shipped one: for measuring what a margin costs)."""
        if not 0.0 < fmr < 1.0:
            raise ValueError("the target false-match rate must be between 0 and 1")
        z = NormalDist().inv_cdf(1.0 - fmr)
        floor = self.impostor_max + margin_z * self.impostor_std
        return max(self.impostor_mean + z * self.impostor_std, floor)

    def fmr_at(self, threshold: float) -> float:
        """The modelled false-match rate of `threshold`."""
        return 1.0 - NormalDist(self.impostor_mean, self.impostor_std).cdf(threshold)

    def save(self, path: Path, cascade: CascadeCalibration | None = None) -> None:
        """Write the JSON file (with the cascade section when given), atomically."""
        data: dict[str, Any] = asdict(self)
        if cascade is not None:
            data["cascade"] = cascade.to_json()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp")
        partial.write_text(json.dumps(data, indent=2) + "\n")
        partial.replace(path)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _calibration_data(
    model_id: str, data_dir: Path | None = None, path: Path | None = None
) -> dict[str, Any]:
    if path is not None:  # FACECRM_CALIBRATION: the operator named the file
        data: dict[str, Any] = json.loads(path.read_text())
        if data.get("model_id") != model_id:
            raise LookupError(
                f"the calibration file {path} is for embedder {data.get('model_id')!r}, "
                f"not {model_id!r}"
            )
        return data
    candidates = []
    if data_dir is not None:
        candidates.append(data_dir / "calibration" / f"{model_id}.json")
    shipped = resources.files("facecrm.vision").joinpath("calibration", f"{model_id}.json")
    candidates.append(Path(str(shipped)))
    for candidate in candidates:
        if candidate.is_file():
            loaded: dict[str, Any] = json.loads(candidate.read_text())
            return loaded
    raise LookupError(
        f"no calibration for embedder {model_id!r}: run `facecrm eval DIR --calibrate` "
        "on labelled photos (one folder per person) to create one"
    )


def load_calibration(
    model_id: str, data_dir: Path | None = None, path: Path | None = None
) -> Calibration:
    """`path` if given (FACECRM_CALIBRATION), else the operator's calibration for
    `model_id` in `data_dir`, else the shipped one."""
    return Calibration.from_json(_calibration_data(model_id, data_dir, path))


def load_cascade(
    model_id: str, data_dir: Path | None = None, path: Path | None = None
) -> CascadeCalibration | None:
    """The cascade section of the first stage's calibration (same lookup order), or None."""
    section = _calibration_data(model_id, data_dir, path).get("cascade")
    return None if section is None else CascadeCalibration.from_json(section)
