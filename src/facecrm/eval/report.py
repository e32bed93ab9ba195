"""Presenting an evaluation: text, ROC plot, calibration from its scores."""

from __future__ import annotations

import math
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


def too_few_impostors(impostors: int, target_far: float) -> str | None:
    """Why no ROC is drawn at `target_far`, or None when there are enough impostor pairs.

    A FAR of x measured on fewer than 1/x impostor pairs rests on less than one accepted
    impostor pair: the curve there would be drawn from nothing.
    """
    needed = math.ceil(1 / target_far - 1e-9)
    if impostors >= needed:
        return None
    return (
        f"too few impostor pairs for a ROC at FAR {target_far:g}: {impostors} impostor pairs,"
        f" at least {needed} (1/FAR) needed; no ROC drawn"
    )


def far_regions(impostors: int) -> list[tuple[float, float, int, int]]:
    """The FAR decades a set of `impostors` impostor pairs can show, lowest first, each as
    (low FAR, high FAR, accepted impostor pairs at low, at high): what each region rests on.
    The lowest region starts at 1/impostors (one accepted pair), below which nothing is known.
    """
    if impostors <= 0:
        return []
    floor = 1 / impostors
    regions = []
    for k in range(math.ceil(math.log10(impostors) - 1e-9), 0, -1):
        low, high = max(10.0**-k, floor), 10.0 ** -(k - 1)
        regions.append((low, high, round(low * impostors), round(high * impostors)))
    return regions


def plot_roc(
    embedded: list[Embedded],
    path: Path,
    report: dict[str, object],
    cascade: tuple[list[float | None], list[bool], float] | None = None,
    target_far: float = 1e-3,
) -> str | None:
    """TAR against FAR (log scale) for all pairs of the set, with the operating point and
    the impostor pairs behind each FAR decade, and the genuine and impostor score
    histograms with the operating threshold (and the cascade's g when given).

    With fewer than 1/target_far impostor pairs the ROC is left out (the histograms are
    still drawn) and the reason is returned (`too_few_impostors`); None when it was drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = _pairs(all_pairs(embedded))
    scores = np.array([-np.inf if p.score is None else p.score for p in pairs])
    genuine = np.array([p.genuine for p in pairs], dtype=bool)
    verification = report["verification"]
    assert isinstance(verification, dict)
    threshold = float(verification["threshold"])
    too_few = too_few_impostors(int((~genuine).sum()), target_far)
    panels = (1 if too_few is None else 0) + 1 + (1 if cascade is not None else 0)
    fig, grid = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=120, squeeze=False)
    axes = list(grid[0])
    if too_few is None:
        _roc(axes.pop(0), scores, genuine, threshold, target_far, str(report["model_id"]))
    _histogram(axes.pop(0), scores, genuine, threshold, str(report["model_id"]))
    if cascade is not None:
        values, labels, t = cascade
        g = np.array([-np.inf if v is None else v for v in values])
        _histogram(axes.pop(0), g, np.array(labels), t, "cascade g = min(z1, z2)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return too_few


def _roc(
    ax: Any,
    scores: np.ndarray,
    genuine: np.ndarray,
    threshold: float,
    target_far: float,
    model_id: str,
) -> None:
    impostor = np.sort(scores[~genuine])
    mated = np.sort(scores[genuine])
    n = len(impostor)
    floor = 1 / n

    def rate(sorted_scores: np.ndarray, t: np.ndarray) -> np.ndarray:
        if not len(sorted_scores):
            return np.zeros(len(t))
        above = len(sorted_scores) - np.searchsorted(sorted_scores, t, side="left")
        return np.asarray(above / len(sorted_scores), dtype=float)

    thresholds = np.unique(scores[np.isfinite(scores)])[::-1]
    far, tar = rate(impostor, thresholds), rate(mated, thresholds)
    ax.step(np.maximum(far, floor), tar, where="post", label="ROC")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel(f"false accept rate ({n} impostor pairs)")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC — {model_id} ({len(scores)} pairs)")
    ax.grid(True, which="both", alpha=0.3)
    for low, high, at_low, at_high in far_regions(n):
        if at_low < 10:  # a rate resting on fewer than ten accepted impostors is noise
            ax.axvspan(low, high, color="0.85", zorder=0)
        ax.text(
            math.sqrt(low * high),
            1.02,
            f"{at_low}-{at_high}",
            ha="center",
            va="bottom",
            fontsize="x-small",
        )
    ax.text(
        0.99,
        0.02,
        "numbers: impostor pairs accepted across each decade",
        transform=ax.transAxes,
        ha="right",
        fontsize="x-small",
    )
    ax.axvline(target_far, color="0.4", linestyle=":", label=f"target FAR {target_far:g}")
    op_far = float(rate(impostor, np.array([threshold]))[0])
    op_tar = float(rate(mated, np.array([threshold]))[0])
    shown = f"{op_far:.2g}" if op_far > 0 else f"< {floor:.2g}"
    ax.plot(
        [max(op_far, floor)],
        [op_tar],
        marker="*",
        markersize=12,
        color="C3",
        linestyle="none",
        label=f"operating point {threshold:.3f}: FAR {shown}, TAR {op_tar:.3f}",
    )
    ax.legend(fontsize="x-small", loc="lower right", bbox_to_anchor=(1, 0.06))


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
