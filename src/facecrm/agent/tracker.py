"""Face tracks across frames: IoU matching, the best frames by quality, one decision each.

A `Track` keeps at most `keep` aligned chips — the sharpest, largest, most
frontal — in memory only. When it has `decide_after` good frames, or when it
ends, its chips are embedded together and the mean template is decided once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from facecrm.vision.types import Box, Face


def iou(a: Box, b: Box) -> float:
    x1, y1 = max(a.x, b.x), max(a.y, b.y)
    x2 = min(a.x + a.width, b.x + b.width)
    y2 = min(a.y + a.height, b.y + b.height)
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


def frame_quality(face: Face) -> float:
    """How useful a frame of a face is for recognition (higher is better)."""
    q = face.quality
    if q is None:
        return face.score
    size = min(1.0, q.face_px / 120.0)
    sharp = min(1.0, q.blur / 150.0)
    frontal = max(0.0, 1.0 - 2.0 * abs(q.yaw))
    return face.score * size * sharp * frontal


@dataclass(eq=False)
class Track:
    camera: str
    started: float
    last_seen: float
    box: Box
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    frames: int = 0
    best: list[tuple[float, Face]] = field(default_factory=list)
    decided: bool = False
    customer_id: str | None = None  # the opted-in customer it was decided to be (issue 13)

    def add(self, face: Face, at: float, keep: int) -> None:
        self.frames += 1
        self.last_seen, self.box = at, face.box
        score = frame_quality(face)
        if score <= 0.05:
            return
        self.best.append((score, face))
        self.best.sort(key=lambda item: item[0], reverse=True)
        del self.best[keep:]

    def forget(self) -> None:
        """Drop every chip (after the decision, and always for strangers)."""
        self.best.clear()


class Tracker:
    """Associates detections of one camera into tracks."""

    def __init__(
        self, camera: str, keep: int = 5, max_gap_s: float = 1.0, min_iou: float = 0.3
    ) -> None:
        self.camera = camera
        self.keep, self.max_gap_s, self.min_iou = keep, max_gap_s, min_iou
        self.tracks: list[Track] = []

    def update(self, faces: list[Face], at: float) -> list[Track]:
        """Add one frame's faces; returns the tracks that ended (not seen for max_gap_s)."""
        pairs = sorted(
            (
                (iou(t.box, f.box), ti, fi)
                for ti, t in enumerate(self.tracks)
                for fi, f in enumerate(faces)
            ),
            reverse=True,
        )
        used_tracks: set[int] = set()
        used_faces: set[int] = set()
        for overlap, ti, fi in pairs:
            if overlap < self.min_iou:
                break
            if ti in used_tracks or fi in used_faces:
                continue
            self.tracks[ti].add(faces[fi], at, self.keep)
            used_tracks.add(ti)
            used_faces.add(fi)
        for fi, face in enumerate(faces):
            if fi not in used_faces:
                track = Track(self.camera, at, at, face.box)
                track.add(face, at, self.keep)
                self.tracks.append(track)
        ended = [t for t in self.tracks if at - t.last_seen > self.max_gap_s]
        self.tracks = [t for t in self.tracks if t not in ended]
        return ended

    def flush(self) -> list[Track]:
        """End every track (the stream is over)."""
        ended, self.tracks = self.tracks, []
        return ended
