"""Presenting an evaluation: text, ROC plot, calibration from its scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from facecrm.eval.metrics import Pair, verification
from facecrm.eval.runner import Embedded, all_pairs, score


def _pairs(pairs: list[tuple[Embedded, Embedded]]) -> list[Pair]:
    return [
        Pair(score(x.template, y.template), x.sample.identity == y.sample.identity)
        for x, y in pairs
    ]


def verification_of(pairs: list[tuple[Embedded, Embedded]], threshold: float) -> dict[str, object]:
    """Verification metrics over an explicit pair list."""
    return verification(_pairs(pairs), threshold)


def plot_roc(
    embedded: list[Embedded],
    path: Path,
    report: dict[str, object],
    cascade: tuple[list[float | None], list[bool], float] | None = None,
) -> None:
    """TAR against FAR (log scale) for all pairs of the set, and the genuine and impostor
    score histograms with the operating threshold (and the cascade's g when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = _pairs(all_pairs(embedded))
    scores = np.array([-np.inf if p.score is None else p.score for p in pairs])
    genuine = np.array([p.genuine for p in pairs])
    thresholds = np.unique(scores[np.isfinite(scores)])[::-1]
    far = [float(np.mean(scores[~genuine] >= t)) for t in thresholds]
    tar = [float(np.mean(scores[genuine] >= t)) for t in thresholds]
    panels = 3 if cascade is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=120)
    ax = axes[0]
    ax.step(np.maximum(far, 1e-4), tar, where="post")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC — {report['model_id']} ({len(pairs)} pairs)")
    ax.grid(True, which="both", alpha=0.3)
    verification = report["verification"]
    assert isinstance(verification, dict)
    _histogram(axes[1], scores, genuine, float(verification["threshold"]), str(report["model_id"]))
    if cascade is not None:
        values, labels, t = cascade
        g = np.array([-np.inf if v is None else v for v in values])
        _histogram(axes[2], g, np.array(labels), t, "cascade g = min(z1, z2)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _histogram(
    ax: Any, scores: np.ndarray, genuine: np.ndarray, threshold: float, title: str
) -> None:
    finite = np.isfinite(scores)
    bins = np.linspace(scores[finite].min(), scores[finite].max(), 50)
    ax.hist(scores[finite & ~genuine], bins=bins, alpha=0.6, label="impostor", log=True)
    ax.hist(scores[finite & genuine], bins=bins, alpha=0.6, label="genuine", log=True)
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_title(title)
    ax.set_xlabel("score")
    ax.legend(fontsize="small")


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
    cascade = report.get("cascade")
    if isinstance(cascade, dict):
        cv, ci = cascade["verification"], cascade["identification"]
        table = Table(title="cascade (both models must agree; margin rule)", show_header=False)
        stages = ", ".join(f"{k} {v:.3f}" for k, v in cascade["stage_thresholds"].items())
        table.add_row("threshold g / per stage", f"{cascade['threshold_z']:.3f} / {stages}")
        table.add_row("ambiguity margin (g)", f"{cascade['ambiguity_margin_z']:.3f}")
        table.add_row("verification accuracy", _fmt(cv["accuracy"]))
        for far, tar in cv["tar_at_far"].items():
            table.add_row(f"TAR @ FAR={far}", _fmt(tar))
        table.add_row("FNIR / FPIR at operating point", f"{_fmt(ci['fnir'])} / {_fmt(ci['fpir'])}")
        table.add_row("unknown by reason", str(cascade["unknown_reasons"]))
        table.add_row("second stage runs (probes)", str(cascade["second_stage_runs"]))
        console.print(table)
    hardest = report.get("hardest_pairs")
    if isinstance(hardest, dict):
        for kind, rows in hardest.items():
            table = Table(title=f"hardest {kind} pairs")
            for column in ("file_x", "file_y", "score", "second_score", "cascade_z"):
                if rows and column in rows[0]:
                    table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(
                    *(
                        _fmt(row[c])
                        for c in ("file_x", "file_y", "score", "second_score", "cascade_z")
                        if c in row
                    )
                )
            console.print(table)
    failures = report["detection_failures"]
    assert isinstance(failures, list)
    for f in failures:
        console.print(f"[yellow]no face:[/] {f['path']} ({f['reason']})")
