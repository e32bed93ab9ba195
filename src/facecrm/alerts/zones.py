"""Zones: named polygons on a camera's picture, for footfall and queue analytics.

A zone is `entrance`, `floor` or `checkout_queue:<n>` (n = 1..999, the till's number), with
3 to `MAX_POINTS` vertices in normalised image coordinates: (0, 0) is the top-left corner,
(1, 1) the bottom-right, so a zone survives a change of resolution. A polygon must be
simple (no edge crosses another), have an area, and lie inside the frame; each name
appears once per camera. Anything else is refused with an `InvalidError` whose `reason`
names what was wrong, and nothing is written (`storeconfig.set_zones`).

The checks are O(n²) in the vertices of one polygon, n ≤ 64, and a camera has at most
`MAX_ZONES` zones: a hostile body costs microseconds, never unbounded work.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from facecrm.errors import InvalidError

MAX_POINTS = 64
MAX_ZONES = 32  # per camera: tills, an entrance, a floor, with room to spare
MIN_AREA = 1e-6  # of the frame: a zero-area (collinear) polygon holds no one
NAME = re.compile(r"^(entrance|floor|checkout_queue:[1-9][0-9]{0,2})\Z")

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Zone:
    """A validated zone: its name and polygon (normalised coordinates)."""

    name: str
    points: tuple[Point, ...]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "points": [list(p) for p in self.points]}


def _refuse(message: str, reason: str) -> InvalidError:
    return InvalidError(message, reason=reason)


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _on_segment(p: Point, q: Point, r: Point) -> bool:
    """q lies on segment pr (given the three are collinear)."""
    return min(p[0], r[0]) <= q[0] <= max(p[0], r[0]) and min(p[1], r[1]) <= q[1] <= max(p[1], r[1])


def segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """Whether closed segments p1p2 and q1q2 share a point (touching counts)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return (
        (d1 == 0 and _on_segment(q1, p1, q2))
        or (d2 == 0 and _on_segment(q1, p2, q2))
        or (d3 == 0 and _on_segment(p1, q1, p2))
        or (d4 == 0 and _on_segment(p1, q2, p2))
    )


def _folds(shared: Point, a: Point, b: Point) -> bool:
    """Edges shared-a and shared-b run back over each other (collinear, same direction)."""
    dot = (a[0] - shared[0]) * (b[0] - shared[0]) + (a[1] - shared[1]) * (b[1] - shared[1])
    return _cross(shared, a, b) == 0 and dot > 0


def is_simple(points: Sequence[Point]) -> bool:
    """No two edges meet except neighbours at their shared vertex (a simple polygon)."""
    n = len(points)
    if len(set(points)) != n:  # a repeated vertex: the outline touches itself
        return False
    for i in range(n):
        a0, a1 = points[i], points[(i + 1) % n]
        for j in range(i + 1, n):
            b0, b1 = points[j], points[(j + 1) % n]
            if j == i + 1:  # a1 is b0
                if _folds(a1, a0, b1):
                    return False
            elif i == 0 and j == n - 1:  # b1 is a0
                if _folds(a0, a1, b0):
                    return False
            elif segments_intersect(a0, a1, b0, b1):
                return False
    return True


def area(points: Sequence[Point]) -> float:
    """The polygon's area (shoelace), as a share of the frame."""
    n = len(points)
    twice = sum(
        points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
        for i in range(n)
    )
    return abs(twice) / 2


def _point(raw: Any, where: str) -> Point:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != 2:
        raise _refuse(f"{where}: a point is [x, y]", "zone_points")
    x, y = raw
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y)):
        raise _refuse(f"{where}: coordinates are numbers", "zone_points")
    if not (math.isfinite(x) and math.isfinite(y)):
        raise _refuse(f"{where}: coordinates are finite numbers", "zone_points")
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise _refuse(
            f"{where}: ({x}, {y}) is outside the frame (coordinates are 0..1)",
            "zone_out_of_frame",
        )
    return float(x), float(y)


def checked_zone(raw: Mapping[str, Any]) -> Zone:
    """One zone from its JSON form, or the `InvalidError` saying what is wrong."""
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise _refuse(
            f"zone name {str(name)[:40]!r}: use entrance, floor or checkout_queue:<1..999>",
            "zone_name",
        )
    points = raw.get("points")
    if not isinstance(points, Sequence) or isinstance(points, str):
        raise _refuse(f"{name}: points is a list of [x, y]", "zone_points")
    if not 3 <= len(points) <= MAX_POINTS:
        raise _refuse(
            f"{name}: a zone has 3 to {MAX_POINTS} points, not {len(points)}", "zone_points"
        )
    polygon = tuple(_point(p, name) for p in points)
    if not is_simple(polygon):
        raise _refuse(f"{name}: the polygon crosses itself", "zone_self_intersecting")
    if area(polygon) < MIN_AREA:
        raise _refuse(f"{name}: the polygon has no area", "zone_points")
    return Zone(name, polygon)


def checked(raw: Sequence[Mapping[str, Any]]) -> list[Zone]:
    """A camera's zones, each checked, names unique; the first problem is raised."""
    if len(raw) > MAX_ZONES:
        raise _refuse(f"a camera has at most {MAX_ZONES} zones", "zone_count")
    zones = [checked_zone(z if isinstance(z, Mapping) else {}) for z in raw]
    names = [z.name for z in zones]
    if dup := next((n for n in names if names.count(n) > 1), None):
        raise _refuse(f"zone {dup!r} appears twice on the camera", "zone_duplicate")
    return zones
