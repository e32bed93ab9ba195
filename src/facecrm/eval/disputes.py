"""`facecrm eval --disputes FILE`: production's disputed matches as impostor scores.

A dispute export (`facecrm disputes export`, format `facecrm-disputes/1`) is JSON Lines:
a header `{"format", "model_id", "stores"}`, then one line per match staff said was
wrong, with `store_id`, `customer_id`, `source` (alert or lookup), `camera`,
`matched_at`, `disputed_at`, `similarity` and `threshold` -- no image, no template.

Each disputed similarity is an impostor score the system accepted. `facecrm eval`
reports how many of them the current threshold still accepts, the threshold floor just
above the highest one, and what that floor costs on the labelled set (genuine pairs it
would reject). With `--calibrate` the floor goes into the calibration as its
`impostor_max` (`Calibration.threshold` is never below it), so a server started on that
calibration rejects every score that was disputed. A staff member's mistake (a genuine
match disputed) would raise the floor for nothing: read the report's cost line first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from facecrm.gallery.threshold import load_calibration, load_cascade

FORMAT = "facecrm-disputes/1"
MAX_LINES = 1_000_000
EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class Disputes:
    model_id: str | None
    count: int  # disputed matches in the file
    scores: list[float]  # their similarities (a match without a score is counted only)


def read(path: Path) -> Disputes:
    """The disputed scores of an export; `ValueError` naming the line when it is not one."""
    scores: list[float] = []
    count = 0
    model_id: str | None = None
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if number > MAX_LINES:
                raise ValueError(f"{path}: more than {MAX_LINES} lines")
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON") from exc
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            if number == 1:
                if item.get("format") != FORMAT:
                    raise ValueError(f"{path}: not a dispute export ({FORMAT} header missing)")
                model_id = item.get("model_id")
                continue
            count += 1
            score = item.get("similarity")
            if score is None:
                continue
            if isinstance(score, bool) or not isinstance(score, int | float) or abs(score) > 1:
                raise ValueError(f"{path}:{number}: similarity must be a number in [-1, 1]")
            scores.append(float(score))
    if count == 0 and model_id is None:
        raise ValueError(f"{path}: empty")
    return Disputes(model_id, count, scores)


def summary(
    disputes: Disputes, model_id: str, threshold: float, genuine: list[float]
) -> dict[str, object]:
    """What the disputed scores say about `threshold`, and what raising it would cost."""
    if disputes.model_id not in (None, model_id):
        raise ValueError(
            f"the disputes were scored by {disputes.model_id!r}, not {model_id!r}: "
            "their similarities are not comparable"
        )
    top = max(disputes.scores, default=None)
    floor = None if top is None else top + EPSILON
    raised = threshold if floor is None else max(threshold, floor)
    return {
        "disputes": disputes.count,
        "scored": len(disputes.scores),
        "max_similarity": top,
        "accepted_at_threshold": sum(s >= threshold for s in disputes.scores),
        "threshold": threshold,
        "threshold_floor": floor,
        "threshold_with_disputes": raised,
        "genuine_rejected_at_threshold": sum(g < threshold for g in genuine),
        "genuine_rejected_with_disputes": sum(g < raised for g in genuine),
        "genuine_pairs": len(genuine),
    }


def raise_floor(path: Path, model_id: str, disputes: Disputes) -> float | None:
    """Rewrite the calibration at `path` so its threshold is above every disputed score
    (as its `impostor_max`); the new floor, or None when it already was."""
    top = max(disputes.scores, default=None)
    calibration = load_calibration(model_id, path=path)
    if top is None or top <= calibration.impostor_max:
        return None
    cascade = load_cascade(model_id, path=path)
    source = f"{calibration.source} + {disputes.count} disputed matches"
    replace(calibration, impostor_max=top, source=source).save(path, cascade)
    return top


def print_text(section: dict[str, object], console: Console) -> None:
    table = Table(title='disputed matches ("not this person")', show_header=False)
    for key, value in section.items():
        table.add_row(
            key.replace("_", " "),
            "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value),
        )
    console.print(table)
