"""Small server-side SVG charts for the console (no JavaScript, no CDN, no extra).

Why not matplotlib: it is only in the `eval` extra, so a server installed without it would
lose its dashboard, and a line or bar chart of a few dozen points needs ~100 lines of SVG.
Every text (titles, labels, series names) goes through `markupsafe.escape`; numbers are
formatted by us. Each series carries `data-series` and each point `data-value`, so a page
test can read what was drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 120, 28, 36
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f")


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _frame(title: str, labels: Sequence[str], top: float) -> list[str]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}"'
        ' stroke="#444"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#444"/>',
    ]
    for i in range(5):  # y grid: 0, 1/4 .. top
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{_num(top * i / 4)}</text>"
        )
    step = max(1, len(labels) // 12)  # at most ~12 x labels
    for i, label in enumerate(labels):
        if i % step == 0:
            x = LEFT + plot_w * (i + 0.5) / max(1, len(labels))
            parts.append(
                f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="10"'
                f' text-anchor="middle">{escape(label)}</text>'
            )
    return parts


def _svg(title: str, parts: list[str], empty: bool) -> Markup:
    if empty:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="empty">'
            "no data in this window</text>"
        )
    body = "".join(parts)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{HEIGHT}"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="{escape(title)}"'
        f' font-family="sans-serif">{body}</svg>'
    )


def _legend(i: int, name: str) -> str:
    y = TOP + 14 * i
    x = WIDTH - RIGHT + 10
    return (
        f'<rect x="{x}" y="{y}" width="10" height="10" fill="{COLOURS[i % len(COLOURS)]}"/>'
        f'<text x="{x + 14}" y="{y + 9}" font-size="11">{escape(name)}</text>'
    )


def line_chart(
    title: str, labels: Sequence[str], series: Mapping[str, Sequence[float | None]]
) -> Markup:
    """One polyline per series over the x labels; None is a gap (no data, not zero)."""
    values = [v for vs in series.values() for v in vs if v is not None]
    top = max(values, default=0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = _frame(title, labels, top)
    for i, (name, vs) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [
            (LEFT + plot_w * (j + 0.5) / max(1, len(labels)), TOP + plot_h * (1 - v / top), v)
            for j, v in enumerate(vs)
            if v is not None
        ]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
        dots = "".join(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" data-value="{_num(v)}"/>'
            for x, y, v in points
        )
        parts.append(
            f'<g class="series" data-series="{escape(name)}" fill="{colour}" stroke="{colour}">'
            f'<polyline points="{coords}" fill="none" stroke-width="2"/>{dots}</g>'
        )
        parts.append(_legend(i, name))
    return _svg(title, parts, not values)


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], name: str) -> Markup:
    """One bar per label (a single series called `name`)."""
    top = max(values, default=0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = _frame(title, labels, top)
    width = plot_w / max(1, len(labels))
    bars = "".join(
        f'<rect x="{LEFT + width * j + width * 0.1:.1f}" y="{TOP + plot_h * (1 - v / top):.1f}"'
        f' width="{width * 0.8:.1f}" height="{plot_h * v / top:.1f}" data-value="{_num(v)}">'
        f"<title>{escape(label)}: {_num(v)}</title></rect>"
        for j, (label, v) in enumerate(zip(labels, values, strict=True))
    )
    parts.append(f'<g class="series" data-series="{escape(name)}" fill="{COLOURS[0]}">{bars}</g>')
    parts.append(_legend(0, name))
    return _svg(title, parts, not any(values))
