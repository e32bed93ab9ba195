"""Presenting an evaluation: text, ROC plot, calibration from its scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from facecrm.config import Settings
from facecrm.eval.metrics import Pair, verification
from facecrm.eval.runner import Embedded, all_pairs, score
from facecrm.gallery.threshold import Calibration


def _pairs(pairs: list[tuple[Embedded, Embedded]]) -> list[Pair]:
    return [
        Pair(score(x.template, y.template), x.sample.identity == y.sample.identity)
        for x, y in pairs
    ]


def verification_of(pairs: list[tuple[Embedded, Embedded]], threshold: float) -> dict[str, object]:
    """Verification metrics over an explicit pair list."""
    return verification(_pairs(pairs), threshold)


def save_calibration(
    embedded: list[Embedded], model_id: str, settings: Settings, source: str
) -> Path:
    """Fit the threshold calibration on all pairs of the set; returns its path."""
    scored = [(p.score, p.genuine) for p in _pairs(all_pairs(embedded)) if p.score is not None]
    calibration = Calibration.fit(
        model_id,
        [score for score, genuine in scored if not genuine],
        [score for score, genuine in scored if genuine],
        source=source,
    )
    path = settings.data_dir / "calibration" / f"{model_id}.json"
    calibration.save(path)
    return path


def plot_roc(embedded: list[Embedded], path: Path, report: dict[str, object]) -> None:
    """Draw TAR against FAR (log scale) for all pairs of the set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = _pairs(all_pairs(embedded))
    scores = np.array([-np.inf if p.score is None else p.score for p in pairs])
    genuine = np.array([p.genuine for p in pairs])
    thresholds = np.unique(scores[np.isfinite(scores)])[::-1]
    far = [float(np.mean(scores[~genuine] >= t)) for t in thresholds]
    tar = [float(np.mean(scores[genuine] >= t)) for t in thresholds]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.step(np.maximum(far, 1e-4), tar, where="post")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC — {report['model_id']} ({len(pairs)} pairs)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_text(report: dict[str, object], console: Console) -> None:
    """A human-readable report."""
    v = report["verification"]
    i = report["identification"]
    assert isinstance(v, dict) and isinstance(i, dict)
    table = Table(
        title=f"facecrm eval — {report['dataset']} ({report['model_id']})", show_header=False
    )
    table.add_row("images / identities", f"{report['images']} / {report['identities']}")
    table.add_row("faces found", str(report["faces_found"]))
    table.add_row(
        "seconds per image", f"{report['seconds_per_image']:.4f} ({report['workers']} workers)"
    )
    table.add_row(
        "verification pairs (genuine/impostor)",
        f"{v['pairs']} ({v.get('genuine_pairs')}/{v.get('impostor_pairs')})",
    )
    table.add_row("operating threshold (cosine)", _fmt(v.get("threshold")))
    table.add_row("verification accuracy", _fmt(v["accuracy"]))
    table.add_row("best accuracy (any threshold)", _fmt(v["best_accuracy"]))
    for far, tar in v["tar_at_far"].items():
        table.add_row(f"TAR @ FAR={far}", _fmt(tar))
    table.add_row(
        "identification probes (mated/non-mated)", f"{i['mated_probes']}/{i['non_mated_probes']}"
    )
    table.add_row("rank-1", _fmt(i["rank1"]))
    for fpir, fnir in i["fnir_at_fpir"].items():
        table.add_row(f"FNIR @ FPIR<={fpir}", _fmt(fnir))
    table.add_row("FNIR / FPIR at operating threshold", f"{_fmt(i['fnir'])} / {_fmt(i['fpir'])}")
    console.print(table)
    failures = report["detection_failures"]
    assert isinstance(failures, list)
    for f in failures:
        console.print(f"[yellow]no face:[/] {f['path']} ({f['reason']})")
