"""The typed values that flow through the vision pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""An RGB image, shape (height, width, 3), dtype uint8."""

Vector = npt.NDArray[np.float32]
"""A unit-length face template."""


@dataclass(frozen=True, slots=True)
class Box:
    """A face box in image pixels."""

    x: float
    y: float
    width: float
    height: float

    def as_dict(self) -> dict[str, int]:
        """Rounded box, for JSON."""
        return {
            "x": round(self.x),
            "y": round(self.y),
            "width": round(self.width),
            "height": round(self.height),
        }


@dataclass(frozen=True, slots=True)
class Quality:
    """How usable a face is for enrollment; `issues` empty means it passes."""

    face_px: float  # face width in source pixels
    blur: float  # variance of the Laplacian on the aligned chip (higher is sharper)
    yaw: float  # nose offset from the eye midpoint, in eye distances (0 = frontal)
    roll_deg: float
    detector_score: float
    issues: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.issues


@dataclass(frozen=True, slots=True)
class Face:
    """One face found in an image; later stages fill in the optional fields.

    `landmarks` are YuNet's five points in image pixels: right eye, left eye,
    nose tip, right and left mouth corners (subject's right/left).
    """

    box: Box
    landmarks: npt.NDArray[np.float32]
    score: float
    chip: Image | None = field(default=None, repr=False)
    quality: Quality | None = None
    template: Vector | None = field(default=None, repr=False)
    # the cascade's second model's own chip of this face (the store agent keeps it per track)
    second_chip: Image | None = field(default=None, repr=False)
